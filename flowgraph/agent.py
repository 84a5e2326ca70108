"""The worker side of the control plane: a thread beside each replica.

The agent owns the replica's DEALER socket to the launcher. It forwards the
replica's messages (register, ready, done, error) and the launcher's
(address book, start, stop, shutdown) over an inproc pair socket, sends a
heartbeat with the replica's counters every ``heartbeat_s`` (the launcher's
progress view) and watches the launcher's: when the
launcher falls silent for ``launcher_timeout_s`` (or, in a worker process,
its stdin closes because the launcher died) the replica is told to stop and
``on_stop`` runs, which in a process arms a hard exit, so that a lost
launcher leaves no worker behind even if user code never returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import wire
from .channel import ControlPipe
from .counters import Counters
from .security import Curve

log = logging.getLogger(__name__)

HEARTBEAT_S = 0.5
LAUNCHER_TIMEOUT_S = 3.0


class Agent(threading.Thread):
    """Forwards control messages for one replica and keeps the heartbeat both ways."""

    def __init__(
        self,
        context: zmq.Context,
        control_endpoint: str,
        token: bytes,
        replica_id: str,
        on_stop: Callable[[str], None],
        counters: Counters,
        curve: Curve | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        launcher_timeout_s: float = LAUNCHER_TIMEOUT_S,
    ) -> None:
        super().__init__(name=f"flowgraph-agent-{replica_id}", daemon=True)
        self._context = context
        self._control_endpoint = control_endpoint
        self._token = token
        self._replica_id = replica_id
        self._on_stop = on_stop
        self._counters = counters
        self._curve = curve
        self._heartbeat_s = heartbeat_s
        self._launcher_timeout_s = launcher_timeout_s
        self._pair_endpoint = f"inproc://flowgraph-agent-{id(self)}"
        self._pair = context.socket(zmq.PAIR)
        self._pair.linger = 0
        self._pair.bind(self._pair_endpoint)
        self.launcher_lost = threading.Event()
        """Set from outside (stdin closed) or inside (no heartbeat) when the launcher is gone."""

    def pipe(self) -> ControlPipe:
        """The replica's end of the pipe; call in the replica's thread before ``start()``."""
        socket = self._context.socket(zmq.PAIR)
        socket.linger = 0
        socket.connect(self._pair_endpoint)
        return ControlPipe(socket)

    def run(self) -> None:
        dealer = self._context.socket(zmq.DEALER)
        dealer.linger = 2000
        if self._curve is not None:
            self._curve.connect(dealer)
        dealer.connect(self._control_endpoint)
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(self._pair, zmq.POLLIN)
        last_heard = time.monotonic()
        next_beat = 0.0
        stopping = False
        monitors: list[zmq.Socket] = []
        try:
            while True:
                now = time.monotonic()
                if now >= next_beat:
                    self._send(dealer, "heartbeat", self._counters.snapshot())
                    next_beat = now + self._heartbeat_s
                if not stopping and (self.launcher_lost.is_set()
                                     or now - last_heard > self._launcher_timeout_s):
                    self.launcher_lost.set()
                    stopping = True
                    self._request_stop("the launcher is gone")
                events = dict(poller.poll(int(self._heartbeat_s * 1000)))
                if self._pair in events:
                    kind, body, attachment = self._pair.recv_pyobj()
                    if kind == "exit":
                        return
                    if kind == "monitor":
                        monitors += self._watch(poller, body["endpoints"])
                    else:
                        self._send(dealer, kind, body, attachment)
                for monitor in monitors:
                    if monitor in events:
                        _log_rejection(self._replica_id, recv_monitor_message(monitor))
                if dealer in events:
                    message = wire.decode_control(self._token, dealer.recv_multipart())
                    if message is None:
                        log.warning("%s: rejected a control message not from this run's launcher",
                                    self._replica_id)
                        continue
                    last_heard = time.monotonic()
                    kind, body, _ = message
                    if kind == "heartbeat":
                        continue
                    if kind == "stop" and not stopping:
                        stopping = True
                        self._request_stop(body.get("reason", "stopped by the launcher"))
                        continue
                    self._pair.send_pyobj((kind, body))
        finally:
            for monitor in monitors:
                monitor.close(linger=0)
            dealer.close()
            self._pair.close()

    def _watch(self, poller: zmq.Poller, endpoints: list[str]) -> list[zmq.Socket]:
        monitors = []
        for endpoint in endpoints:
            monitor = self._context.socket(zmq.PAIR)
            monitor.connect(endpoint)
            poller.register(monitor, zmq.POLLIN)
            monitors.append(monitor)
        return monitors

    def _send(self, dealer: zmq.Socket, kind: str, body: dict[str, Any], attachment: Any = None) -> None:
        body = {**body, "replica": self._replica_id}
        dealer.send_multipart(wire.encode_control(self._token, kind, body, attachment))

    def _request_stop(self, reason: str) -> None:
        self._pair.send_pyobj(("stop", {"reason": reason}))
        self._on_stop(reason)


def _log_rejection(replica_id: str, event: Any) -> None:
    log.warning("%s: rejected a connection to %s: %s (not a ZeroMQ peer of this run)",
                replica_id, event["endpoint"].decode(), zmq.Event(event["event"]).name)


def finish_pipe(pipe: ControlPipe) -> None:
    """Tell the agent the replica is done with the control plane, and close the pipe."""
    pipe.socket.send_pyobj(("exit", {}, None))
    pipe.socket.close(linger=1000)
