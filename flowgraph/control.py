"""The launcher side of the control plane.

One ROUTER socket; every worker's agent connects a DEALER to it. A run goes:

1. every replica registers the endpoints it bound (ports are picked by the
   kernel, never hard-coded);
2. the launcher sends everyone the address book; replicas connect, wait for
   their broadcast subscribers and run ``setup()``, then report ready;
3. when all are ready the launcher sends start (the start barrier);
4. replicas report done (with their counters) or an error;
5. when all are done the launcher sends shutdown; a replica keeps its
   sockets open until then, so no tail of a stream is lost at close.

Heartbeats go both ways every ``HEARTBEAT_S``. Any error, a replica whose
process ends before it is done, or a missing heartbeat fails the run with
``RunFailed`` naming node, replica and host. Messages without this run's
token are logged and dropped before anything in them is decoded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import wire
from .agent import HEARTBEAT_S
from .channel import Wiring, monitor_handshakes
from .errors import RunFailed
from .launch.base import Backend, Exit
from .plan import Plan, ReplicaPlan
from .security import Curve

log = logging.getLogger(__name__)

REGISTER_TIMEOUT_S = 60.0
LAST_WORDS_S = 0.5
"""How long a replica that ended without being done may take to deliver its error message."""
_PHASES = {
    "setup": "setup()", "process": "process()", "generate": "generate()", "finish": "finish()",
    "teardown": "teardown()", "load": "loading its code", "receive": "receiving data",
    "send": "sending its output", "runtime": "the runtime",
}


@dataclass(frozen=True)
class Done:
    """What a replica reported when it finished."""

    stats: dict[str, Any]
    collected: list[Any] | None


class Coordinator:
    """Drives one run: address book, start barrier, heartbeats, completion, failure."""

    def __init__(self, context: zmq.Context, plan: Plan, token: bytes, backend: Backend,
                 curve: Curve | None = None) -> None:
        self._plan = plan
        self._token = token
        self._backend = backend
        self._replicas: dict[str, ReplicaPlan] = {r.id: r for r in plan.replicas}
        wiring = Wiring(backend.control_bind, curve=curve)
        self._socket = context.socket(zmq.ROUTER)
        self._socket.linger = 0
        wiring.secure(self._socket, serve=True)
        self.endpoint = wiring.bind(self._socket, "control")
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._monitor: zmq.Socket | None = None
        if not wiring.is_inproc:
            self._monitor = context.socket(zmq.PAIR)
            self._monitor.connect(monitor_handshakes(self._socket))
            self._poller.register(self._monitor, zmq.POLLIN)
        self._identities: dict[str, bytes] = {}
        self._last_seen: dict[str, float] = {}
        self._endpoints: dict[str, dict[str, str]] = {}
        self._ready: set[str] = set()
        self._done: dict[str, Done] = {}
        self._rejected = 0
        self.started_at: float | None = None
        """``time.monotonic()`` when the start barrier opened."""
        self.live: dict[str, dict[str, Any]] = {}
        """The latest counters of each replica (from heartbeats, then from done)."""
        self.ended: set[str] = set()
        """Replicas whose process or thread has ended."""

    def serve(self, register_timeout_s: float = REGISTER_TIMEOUT_S,
              on_tick: Callable[[], None] | None = None) -> dict[str, Done]:
        """Run the protocol until every replica is done; raises ``RunFailed``.

        ``on_tick`` is called about ten times a second (the progress view).
        """
        register_deadline = time.monotonic() + register_timeout_s
        book_sent = start_sent = False
        next_beat = 0.0
        total = len(self._replicas)
        while len(self._done) < total:
            events = dict(self._poller.poll(100))
            if self._socket in events:
                while self._socket.poll(0):
                    self._handle(self._socket.recv_multipart())
            if self._monitor is not None and self._monitor in events:
                event = recv_monitor_message(self._monitor)
                log.warning("rejected a connection to the control port %s: %s (not a worker of this run)",
                            event["endpoint"].decode(), zmq.Event(event["event"]).name)
            now = time.monotonic()
            if now >= next_beat:
                self._broadcast("heartbeat", {})
                next_beat = now + HEARTBEAT_S
            self._check_exits()
            self._check_heartbeats(now)
            if not book_sent and len(self._endpoints) == total:
                self._broadcast("address_book", {"replicas": self._endpoints})
                book_sent = True
            if not start_sent and len(self._ready) == total:
                self.started_at = time.monotonic()
                self._broadcast("start", {})
                start_sent = True
            if not book_sent and now > register_deadline:
                missing = sorted(set(self._replicas) - set(self._endpoints))
                raise self._failure(missing[0], f"did not register within {register_timeout_s:.0f} s")
            if on_tick is not None:
                on_tick()
        self._broadcast("shutdown", {})
        return self._done

    def stop(self, reason: str) -> None:
        """Ask every replica that ever spoke to stop."""
        self._broadcast("stop", {"reason": reason})

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.close(linger=0)
        self._socket.close()

    def _handle(self, frames: list[bytes]) -> None:
        identity, *rest = frames
        message = wire.decode_control(self._token, rest)
        replica_id = message[1].get("replica") if message else None
        if message is None or replica_id not in self._replicas:
            self._rejected += 1
            if self._rejected <= 5 or self._rejected % 1000 == 0:
                log.warning("rejected a control message not from this run (%d frames); %d so far",
                            len(rest), self._rejected)
            return
        kind, body, attachment = message
        self._identities[replica_id] = identity
        self._last_seen[replica_id] = time.monotonic()
        if kind == "register":
            self._endpoints[replica_id] = body["endpoints"]
        elif kind == "ready":
            self._ready.add(replica_id)
        elif kind == "heartbeat":
            self.live[replica_id] = body
        elif kind == "done":
            self._done[replica_id] = Done(body, attachment)
            self.live[replica_id] = body
        elif kind == "error":
            raise self._failure(
                replica_id,
                f"failed in {_PHASES.get(body['phase'], body['phase'])}: {body['message']}",
                phase=body["phase"],
                remote_traceback=body["traceback"],
                item=body["item"],
            )

    def _check_exits(self) -> None:
        for ended in self._backend.exits():
            self.ended.add(ended.replica)
            if ended.replica in self._done and ended.clean:
                continue
            if ended.replica in self._done:
                log.warning("%s %s after it was done", ended.replica, ended.description)
                continue
            self._await_last_words()
            raise self._failure(ended.replica, _died(ended), signal_name=ended.signal_name)

    def _await_last_words(self) -> None:
        """Handle what arrives for ``LAST_WORDS_S``: a replica that failed may end before its error arrives.

        Its error message travels through its agent's socket, which delivers
        after the replica's thread or process is gone; the error (raised
        here) names the cause, where the exit alone would only say it died.
        """
        deadline = time.monotonic() + LAST_WORDS_S
        while (left := deadline - time.monotonic()) > 0:
            if self._socket.poll(max(1, int(left * 1000))):
                self._handle(self._socket.recv_multipart())

    def _check_heartbeats(self, now: float) -> None:
        timeout = self._backend.heartbeat_timeout_s
        if timeout is None:
            return
        for replica_id, seen in self._last_seen.items():
            if replica_id not in self._done and now - seen > timeout:
                raise self._failure(replica_id, f"stopped answering: no heartbeat for {timeout:.0f} s")

    def _broadcast(self, kind: str, body: dict[str, Any]) -> None:
        frames = wire.encode_control(self._token, kind, body)
        for identity in self._identities.values():
            self._socket.send_multipart([identity, *frames])

    def _failure(self, replica_id: str, what: str, **details: Any) -> RunFailed:
        replica = self._replicas[replica_id]
        message = f"node {replica.node!r} replica {replica.index} on {replica.host} {what}"
        if details.get("item") is not None:
            message += f"\n  while processing item: {details['item']}"
        return RunFailed(message, node=replica.node, replica=replica.index, host=replica.host, **details)


def _died(ended: Exit) -> str:
    text = f"died: {ended.description}"
    if ended.stderr_tail:
        text += "; its last output:\n" + ended.stderr_tail.rstrip()
    return text
