"""The receiving end of a replica, and what both ends share.

``Inputs`` owns the replica's PULL and SUB sockets; it checks every message
(header and token before any unpickling), keeps per-producer sequence
numbers and counts end-of-stream marks. The sending end is in
``outputs.py``. Waiting anywhere also watches the replica's control pipe, so
a stop request interrupts a replica blocked on backpressure or on an empty
input.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from . import serializers, wire
from .dsl import GroupingKind
from .counters import Counters
from .credit import Grants
from .plan import IN_SLOT, ConnectPlan, Plan, ReplicaPlan
from .settings import BufferSettings
from .security import Curve

log = logging.getLogger(__name__)

BROADCAST = GroupingKind.BROADCAST
SUBSCRIBE = b"\x01"
"""First byte of a subscription message arriving at an XPUB socket."""
IDENT_MAGIC = b"FGS1"
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
"""Plain ints: pyzmq's enum flags cost a Python call per ``&``."""
_STOP_CHECK_MS = 100
"""A replica waiting for input looks for a stop request at least this often."""


def ready_to_read(socket: zmq.Socket) -> bool:
    """True if a message waits on ``socket`` (ZMQ_EVENTS as plain ints: cheaper than a poll or zmq.Again)."""
    return bool(socket.get(_EVENTS) & _POLLIN)  # type: ignore[operator]


class Stopped(Exception):
    """The launcher asked this replica to stop."""


class ProtocolError(Exception):
    """A checked message of this run broke the protocol (lost or repeated batches)."""


class ControlPipe:
    """The main thread's end of the pair socket to the replica's control agent."""

    def __init__(self, socket: zmq.Socket) -> None:
        self.socket = socket

    def receive(self, timeout_ms: int | None) -> tuple[str, dict[str, Any]] | None:
        """The next (kind, body) from the agent, or None on timeout; raises ``Stopped`` on stop."""
        if not self.socket.poll(timeout_ms):
            return None
        kind, body = self.socket.recv_pyobj()
        if kind == "stop":
            raise Stopped(body.get("reason", "stop requested"))
        return kind, body

    def raise_if_stopped(self) -> None:
        while ready_to_read(self.socket):
            self.receive(0)

    def send(self, kind: str, body: dict[str, Any], attachment: Any = None) -> None:
        self.socket.send(serializers.dumps((kind, body, attachment)))


REJECTED_HANDSHAKES = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def monitor_handshakes(socket: zmq.Socket) -> str:
    """Report failed handshakes on a bound TCP socket (a stranger sending garbage) to an inproc endpoint.

    libzmq drops such peers itself; the monitor only lets us log them.
    Returns the endpoint to connect a PAIR socket to.
    """
    endpoint = f"inproc://flowgraph-monitor-{uuid.uuid4().hex}"
    socket.monitor(endpoint, REJECTED_HANDSHAKES)
    return endpoint


@dataclass(frozen=True)
class Wiring:
    """How the sockets of one process bind, what they advertise, and their CURVE keys."""

    bind_base: str
    """``tcp://127.0.0.1``, ``tcp://0.0.0.0`` or ``inproc://<run>``."""
    advertise: str | None = None
    """The address peers use instead of the bound one (a host's reachable address)."""
    curve: Curve | None = None
    """The run's keys when it leaves this machine: every TCP socket is then CURVE."""

    @property
    def is_inproc(self) -> bool:
        return self.bind_base.startswith("inproc://")

    def data_socket(self, context: zmq.Context, kind: int, buffers: BufferSettings) -> zmq.Socket:
        """A data socket with the run's buffer limits (HWM must be set before bind/connect)."""
        socket = context.socket(kind)
        socket.linger = 1000
        socket.sndhwm = buffers.effective_hwm
        socket.rcvhwm = buffers.effective_hwm
        socket.setsockopt(zmq.SNDBUF, buffers.socket_buffer_bytes)
        socket.setsockopt(zmq.RCVBUF, buffers.socket_buffer_bytes)
        self.secure(socket, serve=kind in (zmq.PULL, zmq.XPUB, zmq.ROUTER))
        return socket

    def secure(self, socket: zmq.Socket, serve: bool) -> None:
        """Apply CURVE (server side for a socket that binds) if the run uses it."""
        if self.curve is not None:
            (self.curve.serve if serve else self.curve.connect)(socket)

    def bind(self, socket: zmq.Socket, name: str) -> str:
        """Bind to a fresh endpoint and return the endpoint peers should connect to.

        TCP binds to port 0 (the kernel picks a free port, never a
        hard-coded one); inproc gets a unique name.
        """
        if self.is_inproc:
            socket.bind(f"{self.bind_base}/{name}")
            return socket.getsockopt_string(zmq.LAST_ENDPOINT)
        socket.bind(f"{self.bind_base}:0")
        endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if self.advertise is None:
            return endpoint
        return f"tcp://{self.advertise}:{endpoint.rsplit(':', 1)[1]}"


class Inputs:
    """The receiving side of a replica: PULL for shuffle/by_key inputs, SUB for broadcast."""

    def __init__(
        self,
        context: zmq.Context,
        plan: Plan,
        replica: ReplicaPlan,
        token: bytes,
        control: ControlPipe,
        wiring: Wiring,
        counters: Counters,
    ) -> None:
        self._context = context
        self._token = token
        self._control = control
        self._wiring = wiring
        self._grants = Grants(plan, replica, token, wiring, counters)
        self._names = {node.index: node.name for node in plan.nodes}
        self._producers = {
            (plan.node(edge.upstream).index, index)
            for edge in plan.edges_into(replica.node)
            for index in range(edge.producers)
        }
        self._replica = replica
        self.eos_expected = replica.eos_expected
        self._ended: set[tuple[int, int]] = set()
        self._next_seq: dict[tuple[int, int], int] = {}
        self._rejected = 0
        self._pull: zmq.Socket | None = None
        self._sub: zmq.Socket | None = None
        self._subscribed: list[ConnectPlan] = [c for c in replica.connects if c.socket == "SUB"]
        if any(bind.slot == IN_SLOT for bind in replica.binds):
            self._pull = wiring.data_socket(context, zmq.PULL, _widest(
                [edge.buffers for edge in plan.edges_into(replica.node) if edge.grouping.kind is not BROADCAST]))
        if self._subscribed:
            self._sub = wiring.data_socket(context, zmq.SUB, _widest(
                [edge.buffers for edge in plan.edges_into(replica.node) if edge.grouping.kind is BROADCAST]))
            # Subscriptions travel SUB -> XPUB and a SUB drops them at its send HWM;
            # they are a few bytes each, so never limit them.
            self._sub.sndhwm = 0
        self._sockets = [s for s in (self._pull, self._sub) if s is not None]
        for socket in self._sockets:
            socket.rcvtimeo = _STOP_CHECK_MS  # only a waiting receive blocks (see _recv_waiting)
        self._poller = zmq.Poller()
        for socket in [*self._sockets, control.socket]:
            self._poller.register(socket, zmq.POLLIN)
        self._turn = 0

    @property
    def is_done(self) -> bool:
        """True once end of stream arrived from every upstream replica on every input edge."""
        return len(self._ended) >= self.eos_expected

    @property
    def bound(self) -> list[zmq.Socket]:
        """The sockets this side binds (strangers can connect to them)."""
        return [self._pull] if self._pull is not None else []

    def bind(self) -> dict[str, str]:
        """Bind the PULL socket; returns {slot: endpoint}."""
        if self._pull is None:
            return {}
        return {IN_SLOT: self._wiring.bind(self._pull, f"{self._replica.id}/{IN_SLOT}")}

    def connect(self, address_book: Mapping[str, Mapping[str, str]]) -> None:
        """Connect the credit sockets, and the SUB socket to every broadcasting producer and subscribe.

        The data topic is subscribed first, the identification topic after it:
        when a producer sees the identification, it has seen the data
        subscription too (they travel in order on one connection).
        """
        self._grants.connect(self._context, address_book)
        if self._sub is None:
            return
        for connect in self._subscribed:
            self._sub.connect(address_book[connect.peer][connect.slot])
        self._sub.setsockopt(zmq.SUBSCRIBE, wire.topic(self._token))
        self._sub.setsockopt(zmq.SUBSCRIBE, identification(self._token, self._replica.index))

    def receive(self) -> tuple[str, list[Any]] | None:
        """The next batch as (upstream node name, items), or None if none is waiting now.

        End-of-stream marks and rejected messages are consumed on the way.
        """
        count = len(self._sockets)
        for _ in range(count):
            socket = self._sockets[self._turn]
            self._turn = (self._turn + 1) % count  # take turns, so no input starves another
            while ready_to_read(socket):
                batch = self._accept(_recv_frames(socket, zmq.NOBLOCK))
                if batch is not None:
                    return batch
        return None

    def wait_receive(self, wait_ms: int) -> tuple[str, list[Any]] | None:
        """Like ``receive``, but first waits up to about ``wait_ms`` for a message; raises ``Stopped``.

        Call it when ``receive`` gave None and ``is_done`` is still False.
        """
        self._grants.retry()
        if len(self._sockets) == 1:
            frames = self._recv_waiting(self._sockets[0], wait_ms)
            return None if frames is None else self._accept(frames)
        events = dict(self._poller.poll(wait_ms))
        if self._control.socket in events:
            self._control.raise_if_stopped()
        return self.receive()

    def _recv_waiting(self, socket: zmq.Socket, wait_ms: int) -> list[zmq.Frame] | None:
        """A message from ``socket``, waiting in ``recv`` itself (a poll first costs tens of µs a hop).

        The wait is cut into ``_STOP_CHECK_MS`` pieces (the socket's receive
        timeout), between which the control pipe is checked for a stop request.
        """
        for _ in range(max(1, wait_ms // _STOP_CHECK_MS)):
            try:
                return _recv_frames(socket, 0)
            except zmq.Again:
                self._control.raise_if_stopped()
        return None

    def close(self) -> None:
        """Close without linger: a SUB would otherwise hold its subscriptions for closed peers."""
        for socket in self._sockets:
            socket.close(linger=0)
        self._grants.close()

    def _accept(self, frames: Sequence[zmq.Frame]) -> tuple[str, list[Any]] | None:
        header_frame, payload = wire.split(frames)
        header = wire.decode_header(self._token, header_frame)
        if header is None or (header.node, header.replica) not in self._producers or (
                header.kind == wire.Kind.BATCH and not payload) or header.kind == wire.Kind.CREDIT:
            self._reject(frames)
            return None
        producer = (header.node, header.replica)
        expected = self._next_seq.get(producer, 0)
        upstream = self._names[header.node]
        if header.seq != expected:
            raise ProtocolError(
                f"from {upstream}/{header.replica}: expected batch #{expected}, got #{header.seq}"
            )
        self._next_seq[producer] = expected + 1
        if header.kind == wire.Kind.EOS:
            self._ended.add(producer)
            return None
        self._grants.received(producer, header.items)
        return upstream, serializers.decode_items(header.serializer, payload)

    def _reject(self, frames: Sequence[zmq.Frame]) -> None:
        self._rejected += 1
        if self._rejected <= 5 or self._rejected % 1000 == 0:
            first = frames[0].bytes[:40]
            log.warning(
                "%s: rejected a %d-frame message that is not from this run (first bytes %r); "
                "%d rejected so far",
                self._replica.id, len(frames), first, self._rejected,
            )


def _recv_frames(socket: zmq.Socket, flags: int) -> list[zmq.Frame]:
    """All frames of the next message (the first one as ``flags`` say, the rest are there already)."""
    frame = socket.recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = socket.recv(zmq.NOBLOCK, copy=False)
        frames.append(frame)
    return frames


def _widest(settings: list[BufferSettings]) -> BufferSettings:
    """Settings for a socket that receives several edges: the largest queue any of them asks for."""
    widest = max(settings, key=lambda s: (s.effective_hwm, s.socket_buffer_bytes))
    return dataclasses.replace(widest, socket_buffer_bytes=max(s.socket_buffer_bytes for s in settings))


def identification(token: bytes, consumer: int) -> bytes:
    """The second subscription of a broadcast consumer: says which replica it is."""
    return IDENT_MAGIC + token + consumer.to_bytes(4, "big")
