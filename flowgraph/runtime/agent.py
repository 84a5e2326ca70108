"""The worker side of the control plane: a thread beside each replica.

The agent owns the replica's DEALER socket to the launcher. It forwards the
replica's messages (register, ready, done, failed) and the launcher's
(address book, start, stop, shutdown) over the replica's ``ControlPipe``,
sends a heartbeat with the replica's counters every ``heartbeat_s`` (the
launcher's progress view) and watches the launcher's: when the launcher
falls silent for ``silence_s`` (or, in a worker process, its stdin closes
because the launcher died) the replica is told to stop and ``on_stop`` runs,
which in a process arms a hard exit, so that a lost launcher leaves no
worker behind even if user code never returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..wire.control import Heartbeat, Message, Stop, decode_control, encode_control
from .counters import Counters
from .pipe import ControlPipe, Detach, Outgoing, WatchHandshakes
from .security import Curve
from .sockets import describe_rejection

log = logging.getLogger(__name__)


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
        heartbeat_s: float,
        silence_s: float,
        curve: Curve | None = None,
        incarnation: int = 0,
        launcher_lost: threading.Event | None = None,
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
        self._silence_s = silence_s
        self._incarnation = incarnation
        self._pair_endpoint = f"inproc://flowgraph-agent-{id(self)}"
        self._pair = context.socket(zmq.PAIR)
        self._pair.linger = 0
        self._pair.bind(self._pair_endpoint)
        self.launcher_lost = launcher_lost or threading.Event()
        """Set from outside (stdin closed) or inside (no heartbeat) when the launcher is gone."""

    def pipe(self) -> ControlPipe:
        """The replica's end of the pipe; call in the replica's thread before ``start()``."""
        socket = self._context.socket(zmq.PAIR)
        socket.linger = 0
        socket.connect(self._pair_endpoint)
        return ControlPipe(socket, self._replica_id)

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
                    self._send(dealer, Heartbeat(self._counters.snapshot()))
                    next_beat = now + self._heartbeat_s
                if not stopping and (self.launcher_lost.is_set() or now - last_heard > self._silence_s):
                    self.launcher_lost.set()
                    stopping = True
                    self._request_stop("the launcher is gone")
                events = dict(poller.poll(int(self._heartbeat_s * 1000)))
                if self._pair in events:
                    outgoing: Outgoing = self._pair.recv_pyobj()
                    if isinstance(outgoing.message, Detach):
                        return
                    if isinstance(outgoing.message, WatchHandshakes):
                        monitors += self._watch(poller, outgoing.message.endpoints)
                    else:
                        self._send(dealer, outgoing.message, outgoing.attachment)
                for monitor in monitors:
                    if monitor in events:
                        log.warning("%s: rejected a connection to %s (not a ZeroMQ peer of this run)",
                                    self._replica_id, describe_rejection(recv_monitor_message(monitor)))
                if dealer in events:
                    envelope = decode_control(self._token, dealer.recv_multipart())
                    if envelope is None:
                        log.warning("%s: rejected a control message not from this run's launcher",
                                    self._replica_id)
                        continue
                    last_heard = time.monotonic()
                    message = envelope.message
                    if isinstance(message, Heartbeat):
                        continue
                    if isinstance(message, Stop):
                        if not stopping:
                            stopping = True
                            self._request_stop(message.reason)
                        continue
                    self._pair.send_pyobj(message)
        finally:
            for monitor in monitors:
                monitor.close(linger=0)
            dealer.close()
            self._pair.close()

    def _watch(self, poller: zmq.Poller, endpoints: tuple[str, ...]) -> list[zmq.Socket]:
        monitors = []
        for endpoint in endpoints:
            monitor = self._context.socket(zmq.PAIR)
            monitor.connect(endpoint)
            poller.register(monitor, zmq.POLLIN)
            monitors.append(monitor)
        return monitors

    def _send(self, dealer: zmq.Socket, message: Message, attachment: object = None) -> None:
        dealer.send_multipart(encode_control(self._token, message, self._replica_id, attachment, self._incarnation))

    def _request_stop(self, reason: str) -> None:
        self._pair.send_pyobj(Stop(reason))
        self._on_stop(reason)
