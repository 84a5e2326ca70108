"""The data sockets of one replica: batching, backpressure, end of stream.

``Inputs`` owns the replica's PULL and SUB sockets; it checks every message
(header and token before any unpickling), keeps per-producer sequence
numbers and counts end-of-stream marks. ``Outputs`` owns one ``_Edge`` per
output edge: it batches items, sends a batch only when the socket has room
(so a slow consumer slows its producers) and sends end of stream behind the
last batch on every socket, so EOS never overtakes data.

Waiting anywhere here also watches the replica's control pipe, so a stop
request interrupts a replica blocked on backpressure or on an empty input.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from . import wire
from ._keys import replica_for_key
from .dsl import GroupingKind
from .plan import IN_SLOT, BufferSettings, ConnectPlan, EdgePlan, Plan, ReplicaPlan, broadcast_slot

log = logging.getLogger(__name__)

_SEND_WAIT_MS = 100
SUBSCRIBE_TIMEOUT_S = 30.0
"""Broadcast consumers connect right after the address book; longer than this is a failure."""
_SUBSCRIBE = b"\x01"
_IDENT_MAGIC = b"FGS1"


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
        while self.receive(0) is not None:
            pass

    def send(self, kind: str, body: dict[str, Any], attachment: Any = None) -> None:
        self.socket.send_pyobj((kind, body, attachment))


def bind_socket(socket: zmq.Socket, bind_base: str, name: str) -> str:
    """Bind to a fresh endpoint under ``bind_base`` and return the real endpoint.

    TCP binds to port 0 (the kernel picks a free port); inproc gets a unique name.
    """
    if bind_base.startswith("inproc://"):
        socket.bind(f"{bind_base}/{name}")
    else:
        socket.bind(f"{bind_base}:0")
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


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


def data_socket(context: zmq.Context, kind: int, buffers: BufferSettings) -> zmq.Socket:
    """A data socket with the run's buffer limits; HWM must be set before bind/connect."""
    socket = context.socket(kind)
    socket.linger = 1000
    socket.sndhwm = buffers.hwm
    socket.rcvhwm = buffers.hwm
    socket.setsockopt(zmq.SNDBUF, buffers.socket_buffer_bytes)
    socket.setsockopt(zmq.RCVBUF, buffers.socket_buffer_bytes)
    return socket


@dataclass
class EdgeStats:
    """Counters of one output edge."""

    items: int = 0
    batches: int = 0
    bytes: int = 0
    blocked_s: float = 0.0
    """Time spent waiting for a consumer to have room (backpressure)."""


class Inputs:
    """The receiving side of a replica: PULL for shuffle/by_key inputs, SUB for broadcast."""

    def __init__(
        self,
        context: zmq.Context,
        plan: Plan,
        replica: ReplicaPlan,
        token: bytes,
        control: ControlPipe,
    ) -> None:
        self._token = token
        self._control = control
        self._names = {node.index: node.name for node in plan.nodes}
        self._replica = replica
        self.eos_expected = replica.eos_expected
        self._ended: set[tuple[int, int]] = set()
        self._next_seq: dict[tuple[int, int], int] = {}
        self._rejected = 0
        self._pull: zmq.Socket | None = None
        self._sub: zmq.Socket | None = None
        self._subscribed: list[ConnectPlan] = [c for c in replica.connects if c.socket == "SUB"]
        if any(bind.slot == IN_SLOT for bind in replica.binds):
            self._pull = data_socket(context, zmq.PULL, plan.buffers)
        if self._subscribed:
            self._sub = data_socket(context, zmq.SUB, plan.buffers)
            # Subscriptions travel SUB -> XPUB and a SUB drops them at its send HWM;
            # they are a few bytes each, so never limit them.
            self._sub.sndhwm = 0
        self._sockets = [s for s in (self._pull, self._sub) if s is not None]
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

    def bind(self, bind_base: str) -> dict[str, str]:
        """Bind the PULL socket; returns {slot: endpoint}."""
        if self._pull is None:
            return {}
        return {IN_SLOT: bind_socket(self._pull, bind_base, f"{self._replica.id}/{IN_SLOT}")}

    def connect(self, address_book: Mapping[str, Mapping[str, str]]) -> None:
        """Connect the SUB socket to every broadcasting producer and subscribe.

        The data topic is subscribed first, the identification topic after it:
        when a producer sees the identification, it has seen the data
        subscription too (they travel in order on one connection).
        """
        if self._sub is None:
            return
        for connect in self._subscribed:
            self._sub.connect(address_book[connect.peer][connect.slot])
        self._sub.setsockopt(zmq.SUBSCRIBE, wire.topic(self._token))
        self._sub.setsockopt(zmq.SUBSCRIBE, _identification(self._token, self._replica.index))

    def receive(self) -> tuple[str, list[Any]] | None:
        """The next batch as (upstream node name, items), or None if none is waiting now.

        End-of-stream marks and rejected messages are consumed on the way.
        """
        count = len(self._sockets)
        for _ in range(count):
            socket = self._sockets[self._turn]
            self._turn = (self._turn + 1) % count  # take turns, so no input starves another
            while True:
                try:
                    frames = socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                batch = self._accept(frames)
                if batch is not None:
                    return batch
        return None

    def wait(self, timeout_ms: int = 1000) -> None:
        """Block until an input socket is readable (or ``timeout_ms``); raises ``Stopped``."""
        events = dict(self._poller.poll(timeout_ms))
        if self._control.socket in events:
            self._control.raise_if_stopped()

    def close(self) -> None:
        """Close without linger: a SUB would otherwise hold its subscriptions for closed peers."""
        for socket in self._sockets:
            socket.close(linger=0)

    def _accept(self, frames: Sequence[zmq.Frame]) -> tuple[str, list[Any]] | None:
        header = wire.decode_header(self._token, frames[0].bytes) if frames else None
        producer = (header.node, header.replica) if header else None
        if header is None or header.node not in self._names or len(frames) < (
            2 if header.kind is wire.Kind.BATCH else 1
        ):
            self._reject(frames)
            return None
        expected = self._next_seq.get(producer, 0)
        upstream = self._names[header.node]
        if header.seq != expected:
            raise ProtocolError(
                f"from {upstream}/{header.replica}: expected batch #{expected}, got #{header.seq}"
            )
        self._next_seq[producer] = expected + 1
        if header.kind is wire.Kind.EOS:
            self._ended.add(producer)
            return None
        return upstream, wire.decode_items([frame.buffer for frame in frames[1:]])

    def _reject(self, frames: Sequence[zmq.Frame]) -> None:
        self._rejected += 1
        if self._rejected <= 5 or self._rejected % 1000 == 0:
            first = frames[0].bytes[:40] if frames else b""
            log.warning(
                "%s: rejected a %d-frame message that is not from this run (first bytes %r); "
                "%d rejected so far",
                self._replica.id, len(frames), first, self._rejected,
            )


def _identification(token: bytes, consumer: int) -> bytes:
    return _IDENT_MAGIC + token + consumer.to_bytes(4, "big")


class _Edge:
    """One output edge: pending batches, sockets, sequence numbers, stats."""

    def __init__(self, edge: EdgePlan, node_index: int, replica: int, token: bytes,
                 buffers: BufferSettings, control: ControlPipe) -> None:
        self.plan = edge
        self.stats = EdgeStats()
        self._node_index = node_index
        self._replica = replica
        self._token = token
        self._buffers = buffers
        self._control = control
        self._limit = 1
        """Items per batch: adapted after each batch so a batch is about ``batch_bytes``."""
        self.sockets: list[zmq.Socket] = []
        self._seq: list[int] = []

    def _frames(self, socket_index: int, kind: wire.Kind, items: list[Any],
                payload: list[Any] | None = None) -> list[Any]:
        """Header and payload for the next message on socket ``socket_index``."""
        if payload is None:
            payload = wire.encode_items(items) if items else []
        seq = self._seq[socket_index]
        self._seq[socket_index] = seq + 1
        header = wire.encode_header(self._token, kind, self._node_index, self._replica, seq, len(items))
        return [header, *payload]

    def _account(self, items: list[Any], frames: list[Any]) -> None:
        size = wire.frames_size(frames)
        self.stats.items += len(items)
        self.stats.batches += 1
        self.stats.bytes += size
        per_item = max(1, size // len(items))
        self._limit = max(1, min(self._buffers.batch_items, self._buffers.batch_bytes // per_item))

    def _send_waiting(self, socket: zmq.Socket, frames: list[Any]) -> None:
        """Send, waiting as long as the consumer has no room (backpressure)."""
        try:
            socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
            return
        except zmq.Again:
            pass
        started = time.monotonic()
        try:
            while True:
                self._control.raise_if_stopped()
                try:
                    socket.send_multipart(frames, copy=False)  # blocks up to SNDTIMEO
                    return
                except zmq.Again:
                    continue
        finally:
            self.stats.blocked_s += time.monotonic() - started

    def close(self) -> None:
        """Close without linger: called after shutdown, when every consumer already has everything."""
        for socket in self.sockets:
            socket.close(linger=0)


class _PushEdge(_Edge):
    """shuffle and by_key: one PUSH socket and one pending batch per consumer replica."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._pending: list[list[Any]] = [[] for _ in range(self.plan.consumers)]

    def open(self, context: zmq.Context, connects: Sequence[ConnectPlan],
             address_book: Mapping[str, Mapping[str, str]]) -> None:
        for connect in connects:
            socket = data_socket(context, zmq.PUSH, self._buffers)
            socket.sndtimeo = _SEND_WAIT_MS
            socket.connect(address_book[connect.peer][connect.slot])
            self.sockets.append(socket)
        self._seq = [0] * len(self.sockets)

    def flush(self) -> None:
        for consumer in range(self.plan.consumers):
            self._flush_one(consumer)

    def _flush_one(self, consumer: int) -> None:
        items = self._pending[consumer]
        if not items:
            return
        self._pending[consumer] = []
        self._send_batch(consumer, items)

    def _send_batch(self, consumer: int, items: list[Any]) -> None:
        frames = self._frames(consumer, wire.Kind.BATCH, items)
        self._send_waiting(self.sockets[consumer], frames)
        self._account(items, frames)

    def send_eos(self) -> None:
        self.flush()
        for index, socket in enumerate(self.sockets):
            self._send_waiting(socket, self._frames(index, wire.Kind.EOS, []))


class _ShuffleEdge(_PushEdge):
    """Items are dealt round robin; a batch whose consumer is full goes to one with room."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._next = 0
        self._poller = zmq.Poller()

    def open(self, *args: Any) -> None:
        super().open(*args)
        for socket in self.sockets:
            self._poller.register(socket, zmq.POLLOUT)
        self._poller.register(self._control.socket, zmq.POLLIN)

    def add(self, item: Any) -> None:
        consumer = self._next
        self._next = (consumer + 1) % self.plan.consumers
        pending = self._pending[consumer]
        pending.append(item)
        if len(pending) >= self._limit:
            self._flush_one(consumer)

    def _send_batch(self, consumer: int, items: list[Any]) -> None:
        payload = wire.encode_items(items)
        count = len(self.sockets)
        started = None
        while True:
            for offset in range(count):
                index = (consumer + offset) % count
                frames = self._frames(index, wire.Kind.BATCH, items, payload)
                try:
                    self.sockets[index].send_multipart(frames, zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    self._seq[index] -= 1
                    continue
                self._account(items, frames)
                if started is not None:
                    self.stats.blocked_s += time.monotonic() - started
                return
            started = started or time.monotonic()
            events = dict(self._poller.poll(_SEND_WAIT_MS))
            if self._control.socket in events:
                self._control.raise_if_stopped()


class _KeyedEdge(_PushEdge):
    """by_key: the consumer replica comes from a stable hash of the key."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        key = self.plan.grouping.key
        self._key: Callable[[Any], Any] = key if callable(key) else (lambda item: item[key])

    def add(self, item: Any) -> None:
        consumer = replica_for_key(self._key(item), self.plan.consumers)
        pending = self._pending[consumer]
        pending.append(item)
        if len(pending) >= self._limit:
            self._flush_one(consumer)


class _BroadcastEdge(_Edge):
    """broadcast: one XPUB socket reaching every consumer replica; never drops."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._pending: list[Any] = []

    def create(self, context: zmq.Context, bind_base: str, replica_id: str) -> str:
        socket = data_socket(context, zmq.XPUB, self._buffers)
        socket.setsockopt(zmq.XPUB_NODROP, 1)  # a PUB at its HWM silently drops
        socket.setsockopt(zmq.XPUB_MANUAL, 1)  # we decide which subscriptions count
        socket.rcvhwm = 1000  # per peer: only subscriptions arrive here, a few per consumer
        socket.sndtimeo = _SEND_WAIT_MS  # POLLOUT is always set with NODROP: wait in send
        self.sockets = [socket]
        self._seq = [0]
        return bind_socket(socket, bind_base, f"{replica_id}/{broadcast_slot(self.plan.downstream)}")

    def wait_for_subscribers(self) -> None:
        """Apply valid subscriptions until every consumer replica subscribed (slow joiners)."""
        socket = self.sockets[0]
        data_topic = wire.topic(self._token)
        ident_prefix = _IDENT_MAGIC + self._token
        seen: set[int] = set()
        deadline = time.monotonic() + SUBSCRIBE_TIMEOUT_S
        while len(seen) < self.plan.consumers:
            if not socket.poll(100):
                self._control.raise_if_stopped()
                if time.monotonic() > deadline:
                    missing = sorted(set(range(self.plan.consumers)) - seen)
                    raise ProtocolError(
                        f"{self.plan.name}: replicas {missing} of {self.plan.downstream!r} did not "
                        f"subscribe within {SUBSCRIBE_TIMEOUT_S:.0f} s"
                    )
                continue
            message = socket.recv()
            if message == _SUBSCRIBE + data_topic:
                socket.setsockopt(zmq.SUBSCRIBE, data_topic)
            elif message.startswith(_SUBSCRIBE + ident_prefix) and len(message) == 1 + len(ident_prefix) + 4:
                seen.add(int.from_bytes(message[-4:], "big"))
            elif message[:1] == _SUBSCRIBE:
                log.warning("%s: ignored a subscription that is not from this run", self.plan.name)

    def add(self, item: Any) -> None:
        self._pending.append(item)
        if len(self._pending) >= self._limit:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        items, self._pending = self._pending, []
        frames = self._frames(0, wire.Kind.BATCH, items)
        self._send_waiting(self.sockets[0], frames)
        self._account(items, frames)

    def send_eos(self) -> None:
        self.flush()
        self._send_waiting(self.sockets[0], self._frames(0, wire.Kind.EOS, []))


class Outputs:
    """The sending side of a replica: one edge object per output edge."""

    def __init__(self, plan: Plan, replica: ReplicaPlan, token: bytes, control: ControlPipe) -> None:
        node_index = plan.node(replica.node).index
        self._replica = replica
        self._connects = replica.connects
        kinds = {GroupingKind.SHUFFLE: _ShuffleEdge, GroupingKind.BY_KEY: _KeyedEdge,
                 GroupingKind.BROADCAST: _BroadcastEdge}
        self.edges = [
            kinds[edge.grouping.kind](edge, node_index, replica.index, token, plan.buffers, control)
            for edge in plan.edges_from(replica.node)
        ]
        self._linger_s = plan.buffers.linger_ms / 1000
        self.deadline = float("inf")
        """When the oldest pending item has waited ``linger_ms``; ``flush()`` clears it."""

    @property
    def bound(self) -> list[zmq.Socket]:
        """The sockets this side binds (strangers can connect to them)."""
        return [edge.sockets[0] for edge in self.edges if isinstance(edge, _BroadcastEdge)]

    def bind(self, context: zmq.Context, bind_base: str) -> dict[str, str]:
        """Create and bind the XPUB sockets of broadcast edges; returns {slot: endpoint}."""
        return {
            broadcast_slot(edge.plan.downstream): edge.create(context, bind_base, self._replica.id)
            for edge in self.edges if isinstance(edge, _BroadcastEdge)
        }

    def connect(self, context: zmq.Context, address_book: Mapping[str, Mapping[str, str]]) -> None:
        """Connect one PUSH socket per consumer replica of each shuffle/by_key edge."""
        for edge in self.edges:
            if isinstance(edge, _PushEdge):
                connects = [c for c in self._connects if c.edge == edge.plan.name]
                edge.open(context, connects, address_book)

    def wait_for_subscribers(self) -> None:
        for edge in self.edges:
            if isinstance(edge, _BroadcastEdge):
                edge.wait_for_subscribers()

    def emit(self, item: Any) -> None:
        """Hand ``item`` to every output edge (a full batch is sent at once)."""
        if self.deadline == float("inf"):
            self.deadline = time.monotonic() + self._linger_s
        for edge in self.edges:
            edge.add(item)

    def flush(self) -> None:
        """Send every partial batch."""
        for edge in self.edges:
            edge.flush()
        self.deadline = float("inf")

    def send_eos(self) -> None:
        """Flush, then send end of stream on every socket, behind the data."""
        for edge in self.edges:
            edge.send_eos()
        self.deadline = float("inf")

    def close(self) -> None:
        for edge in self.edges:
            edge.close()
