"""The sending end of a replica: batching, backpressure, end of stream.

``Outputs`` owns one edge object per output edge: it batches items, sends a
batch only when the socket has room (so a slow consumer slows its
producers) and sends end of stream behind the last batch on every socket,
so EOS never overtakes data.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq

from . import serializers, wire
from ._keys import replica_for_key
from .channel import IDENT_MAGIC, SUBSCRIBE, ControlPipe, ProtocolError, Wiring, ready_to_read
from .counters import Counters, EdgeStats
from .dsl import GroupingKind
from .plan import CREDIT_START_ITEMS, ConnectPlan, EdgePlan, Plan, ReplicaPlan, broadcast_slot, credit_slot
from .settings import BufferSettings

log = logging.getLogger(__name__)


class SerializationError(Exception):
    """An emitted item cannot be encoded by its edge's serializer."""


_SEND_WAIT_MS = 100
_KEY_CACHE_SIZE = 100_000
SUBSCRIBE_TIMEOUT_S = 30.0
"""Broadcast consumers connect right after the address book; longer than this is a failure."""


def _send(socket: zmq.Socket, frames: list[Any], flags: int) -> None:
    """Send a message: a small single frame by copy (cheaper), several frames without copying."""
    if len(frames) == 1:
        socket.send(frames[0], flags)
    else:
        socket.send_multipart(frames, flags, copy=False)


class _Edge:
    """One output edge: pending items, sockets, sequence numbers, stats.

    By default the pending items wait in one queue, in emission order, and
    leave in batches through ``_send`` (to the first socket, waiting while
    its queue is full); by_key keeps a queue per consumer instead.
    """

    def __init__(self, edge: EdgePlan, node_index: int, replica: int, token: bytes,
                 buffers: BufferSettings, control: ControlPipe, wiring: Wiring, counters: Counters) -> None:
        self.plan = edge
        self.stats = EdgeStats()
        self._counters = counters
        self._node_index = node_index
        self._replica = replica
        self._token = token
        self._buffers = buffers
        self._control = control
        self._wiring = wiring
        self._limit = 1
        """Items per batch: adapted after each batch so a batch is about ``batch_bytes``."""
        self._encoder = serializers.ENCODERS[buffers.serializer]()
        self._serializer = serializers.serializer_id(buffers.serializer)
        self.sockets: list[zmq.Socket] = []
        self._seq: list[int] = []
        self._queue: list[Any] = []

    def _frames(self, socket_index: int, kind: wire.Kind, items: list[Any],
                payload: list[Any] | None = None) -> list[Any]:
        """Header and payload for the next message on socket ``socket_index``."""
        if payload is None:
            payload = self._encode(items) if items else []
        seq = self._seq[socket_index]
        self._seq[socket_index] = seq + 1
        header = wire.encode_header(self._token, kind, self._serializer, self._node_index, self._replica, seq,
                                    len(items))
        return wire.message(header, payload)

    def _encode(self, items: list[Any]) -> list[Any]:
        """The payload frames of ``items``; raises ``SerializationError`` naming the first item that fails."""
        try:
            return self._encoder.encode(items)
        except Exception:
            for item in items:
                try:
                    self._encoder.encode([item])
                except Exception as item_error:
                    raise SerializationError(
                        f"{self._buffers.serializer} cannot encode an item of type {type(item).__name__} for edge "
                        f"{self.plan.name!r} ({type(item_error).__name__}: {item_error}); convert the item, or "
                        f"choose another serializer for the edge or the topology"
                    ) from item_error
            raise

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
            _send(socket, frames, zmq.NOBLOCK)
            return
        except zmq.Again:
            pass
        started = time.monotonic()
        try:
            while True:
                self._control.raise_if_stopped()
                try:
                    _send(socket, frames, 0)  # blocks up to SNDTIMEO
                    return
                except zmq.Again:
                    continue
        finally:
            self._blocked_since(started)

    def _blocked_since(self, started: float) -> None:
        waited = time.monotonic() - started
        self.stats.blocked_s += waited
        self._counters.blocked_s += waited

    def add_many(self, items: list[Any]) -> None:
        """Queue ``items``; send what makes full batches."""
        queue = self._queue
        queue.extend(items)
        while len(queue) >= (whole := self._whole()):
            batch = queue[:whole]
            del queue[:whole]
            self._send(batch)

    def _whole(self) -> int:
        """How many queued items are sent at once (one full batch)."""
        return self._limit

    def flush(self) -> None:
        """Send every pending item."""
        if self._queue:
            items, self._queue = self._queue, []
            self._send(items)

    def has_pending(self) -> bool:
        """True if items wait that were not sent yet."""
        return bool(self._queue)

    def _send(self, items: list[Any]) -> None:
        """Send ``items`` as one batch on the first socket, waiting while its queue is full."""
        frames = self._frames(0, wire.Kind.BATCH, items)
        self._send_waiting(self.sockets[0], frames)
        self._account(items, frames)

    def send_eos(self) -> None:
        """Flush, then send end of stream to every consumer replica."""
        raise NotImplementedError

    def close(self) -> None:
        """Close without linger: called after shutdown, when every consumer already has everything."""
        for socket in self.sockets:
            socket.close(linger=0)


class _PushEdge(_Edge):
    """shuffle and by_key: one PUSH socket per consumer replica."""

    def open(self, context: zmq.Context, connects: Sequence[ConnectPlan],
             address_book: Mapping[str, Mapping[str, str]]) -> None:
        for connect in connects:
            socket = self._wiring.data_socket(context, zmq.PUSH, self._buffers)
            socket.sndtimeo = _SEND_WAIT_MS
            socket.connect(address_book[connect.peer][connect.slot])
            self.sockets.append(socket)
        self._seq = [0] * len(self.sockets)

    def send_eos(self) -> None:
        self.flush()
        for index, socket in enumerate(self.sockets):
            self._send_waiting(socket, self._frames(index, wire.Kind.EOS, []))


class _ShuffleEdge(_PushEdge):
    """shuffle to a single consumer replica: batches in order, sent as they fill."""


class _DemandEdge(_PushEdge):
    """shuffle to several consumer replicas: each gets no more items than it granted credit for.

    Consumers grant credit for about ``CREDIT_QUEUE_S`` of their own work
    (see ``credit``), so items are not dealt out ahead of time and a replica
    on a slower core gets less. Items wait in one queue, in the order they
    were emitted; a batch is split into consecutive parts, one per consumer
    that has credit (taking turns which goes first), each as large as its
    credit allows. So every consumer gets its items in emission order (FIFO
    per pair), and a short stream of expensive items is still spread over
    the replicas. With no credit anywhere the producer waits
    (backpressure). End of stream needs no credit.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._credit = [CREDIT_START_ITEMS] * self.plan.consumers
        self._turn = 0
        self.credit_socket: zmq.Socket | None = None
        self._consumer_node = -1
        self._rejected = 0
        self._credit_poller = zmq.Poller()

    def create(self, context: zmq.Context, replica_id: str, consumer_node: int) -> str:
        """Create and bind the credit socket; ``consumer_node`` is the index of the consumer node."""
        socket = self._wiring.data_socket(context, zmq.PULL, self._buffers)
        socket.rcvhwm = 1000  # credit messages are a header each, a few per consumer at a time
        self.credit_socket = socket
        self._consumer_node = consumer_node
        return self._wiring.bind(socket, f"{replica_id}/{credit_slot(self.plan.downstream)}")

    def open(self, *args: Any) -> None:
        super().open(*args)
        assert self.credit_socket is not None, "create() binds the credit socket first"
        self._credit_poller.register(self.credit_socket, zmq.POLLIN)
        self._credit_poller.register(self._control.socket, zmq.POLLIN)

    def _whole(self) -> int:
        return self._limit * len(self.sockets)  # a full batch for every consumer

    def _send(self, items: list[Any]) -> None:
        """Send ``items`` in consecutive parts to consumers with credit, waiting for credit if none has."""
        count = len(self.sockets)
        started = None
        while items:
            self._take_credit()
            turn = self._turn
            ready = [index for index in (*range(turn, count), *range(turn)) if self._credit[index] > 0]
            share = -(-len(items) // max(1, len(ready)))
            sent = 0
            for index in ready:
                part = items[sent:sent + min(share, self._credit[index], self._limit)]
                frames = self._frames(index, wire.Kind.BATCH, part)
                try:
                    _send(self.sockets[index], frames, zmq.NOBLOCK)
                except zmq.Again:  # its queue is full all the same
                    self._seq[index] -= 1
                    break  # the next part starts here: items leave in order
                self._credit[index] -= len(part)
                self._account(part, frames)
                sent += len(part)
                self._turn = (index + 1) % count
                if sent == len(items):
                    break
            items = items[sent:]
            if items and not sent:
                started = started or time.monotonic()
                if self._control.socket in dict(self._waiting_poller(ready).poll(_SEND_WAIT_MS)):
                    self._control.raise_if_stopped()
        if started is not None:
            self._blocked_since(started)

    def _waiting_poller(self, ready: list[int]) -> zmq.Poller:
        """What to wait for: credit, a stop, and room in the queues of consumers that have credit."""
        if not ready:
            return self._credit_poller
        poller = zmq.Poller()
        for socket in (self.credit_socket, self._control.socket):
            poller.register(socket, zmq.POLLIN)
        for index in ready:
            poller.register(self.sockets[index], zmq.POLLOUT)
        return poller

    def _take_credit(self) -> None:
        """Add up the credit messages that came; reject what is not from a consumer of this run."""
        socket = self.credit_socket
        assert socket is not None
        while ready_to_read(socket):
            frames = socket.recv_multipart(zmq.NOBLOCK)
            header = wire.decode_header(self._token, frames[0]) if len(frames) == 1 else None
            if (header is None or header.kind != wire.Kind.CREDIT or header.node != self._consumer_node
                    or not 0 <= header.replica < len(self._credit)):
                self._rejected += 1
                if self._rejected <= 5 or self._rejected % 1000 == 0:
                    log.warning("%s: rejected a %d-frame credit message that is not from this run; %d so far",
                                self.plan.name, len(frames), self._rejected)
                continue
            self._credit[header.replica] += header.items

    def close(self) -> None:
        super().close()
        if self.credit_socket is not None:
            self.credit_socket.close(linger=0)


class _KeyedEdge(_PushEdge):
    """by_key: the consumer replica comes from a stable hash of the key (cached for str and int keys)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        key = self.plan.grouping.key
        self._key: Callable[[Any], Any] = key if callable(key) else operator.itemgetter(key)
        self._replica_of: dict[Any, int] = {}
        self._pending: list[list[Any]] = [[] for _ in range(self.plan.consumers)]

    def add_many(self, items: list[Any]) -> None:
        key, replica_of, pending = self._key, self._replica_of, self._pending
        consumers = self.plan.consumers
        for item in items:
            value = key(item)
            kind = type(value)
            if kind is str or kind is int:  # equal keys of other types may hash apart: not cached
                consumer = replica_of.get(value)
                if consumer is None:
                    if len(replica_of) >= _KEY_CACHE_SIZE:
                        replica_of.clear()
                    consumer = replica_of[value] = replica_for_key(value, consumers)
            else:
                consumer = replica_for_key(value, consumers)
            batch = pending[consumer]
            batch.append(item)
            if len(batch) >= self._limit:
                pending[consumer] = []
                self._send_batch(consumer, batch)

    def flush(self) -> None:
        for consumer, batch in enumerate(self._pending):
            if batch:
                self._pending[consumer] = []
                self._send_batch(consumer, batch)

    def has_pending(self) -> bool:
        return any(self._pending)

    def _send_batch(self, consumer: int, items: list[Any]) -> None:
        frames = self._frames(consumer, wire.Kind.BATCH, items)
        self._send_waiting(self.sockets[consumer], frames)
        self._account(items, frames)


class _BroadcastEdge(_Edge):
    """broadcast: one XPUB socket reaching every consumer replica; never drops."""

    def create(self, context: zmq.Context, replica_id: str) -> str:
        socket = self._wiring.data_socket(context, zmq.XPUB, self._buffers)
        socket.setsockopt(zmq.XPUB_NODROP, 1)  # a PUB at its HWM silently drops
        socket.setsockopt(zmq.XPUB_MANUAL, 1)  # we decide which subscriptions count
        socket.rcvhwm = 1000  # per peer: only subscriptions arrive here, a few per consumer
        socket.sndtimeo = _SEND_WAIT_MS  # POLLOUT is always set with NODROP: wait in send
        self.sockets = [socket]
        self._seq = [0]
        return self._wiring.bind(socket, f"{replica_id}/{broadcast_slot(self.plan.downstream)}")

    def wait_for_subscribers(self) -> None:
        """Apply valid subscriptions until every consumer replica subscribed (slow joiners)."""
        socket = self.sockets[0]
        data_topic = wire.topic(self._token)
        ident_prefix = IDENT_MAGIC + self._token
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
            if message == SUBSCRIBE + data_topic:
                socket.setsockopt(zmq.SUBSCRIBE, data_topic)
            elif message.startswith(SUBSCRIBE + ident_prefix) and len(message) == 1 + len(ident_prefix) + 4:
                seen.add(int.from_bytes(message[-4:], "big"))
            elif message[:1] == SUBSCRIBE:
                log.warning("%s: ignored a subscription that is not from this run", self.plan.name)

    def send_eos(self) -> None:
        self.flush()
        self._send_waiting(self.sockets[0], self._frames(0, wire.Kind.EOS, []))


class Outputs:
    """The sending side of a replica: one edge object per output edge."""

    def __init__(self, plan: Plan, replica: ReplicaPlan, token: bytes, control: ControlPipe,
                 wiring: Wiring, counters: Counters) -> None:
        node_index = plan.node(replica.node).index
        self._replica = replica
        self._connects = replica.connects
        kinds = {GroupingKind.SHUFFLE: _ShuffleEdge, GroupingKind.BY_KEY: _KeyedEdge,
                 GroupingKind.BROADCAST: _BroadcastEdge}
        self.edges = [
            (_DemandEdge if edge.uses_credit else kinds[edge.grouping.kind])(
                edge, node_index, replica.index, token, edge.buffers, control, wiring, counters)
            for edge in plan.edges_from(replica.node)
        ]
        self._consumer_nodes = {edge.plan.downstream: plan.node(edge.plan.downstream).index for edge in self.edges}
        counters.edges = {edge.plan.name: edge.stats for edge in self.edges}
        if len(self.edges) == 1:
            self.emit_many = self.edges[0].add_many  # type: ignore[method-assign]  # one call less per batch
        self.linger_s = min((edge.plan.buffers.linger_ms for edge in self.edges), default=5.0) / 1000
        """Partial batches are due this long after the last flush (the smallest ``linger_ms`` of the edges)."""
        self.chunk_items = min((edge.plan.buffers.batch_items for edge in self.edges), default=1)
        """How many items a source gathers before handing them on: at most one batch of any edge."""
        self.deadline = time.monotonic() + self.linger_s
        """When partial batches are due: ``linger_ms`` after the last flush."""

    @property
    def bound(self) -> list[zmq.Socket]:
        """The sockets this side binds (strangers can connect to them)."""
        return [edge.sockets[0] for edge in self.edges if isinstance(edge, _BroadcastEdge)] + [
            edge.credit_socket for edge in self.edges
            if isinstance(edge, _DemandEdge) and edge.credit_socket is not None]

    def bind(self, context: zmq.Context) -> dict[str, str]:
        """Create and bind the XPUB sockets of broadcast edges and the credit sockets; returns {slot: endpoint}."""
        endpoints = {
            broadcast_slot(edge.plan.downstream): edge.create(context, self._replica.id)
            for edge in self.edges if isinstance(edge, _BroadcastEdge)
        }
        for edge in self.edges:
            if isinstance(edge, _DemandEdge):
                endpoints[credit_slot(edge.plan.downstream)] = edge.create(
                    context, self._replica.id, self._consumer_nodes[edge.plan.downstream])
        return endpoints

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

    def emit_many(self, items: list[Any]) -> None:
        """Hand ``items`` to every output edge (full batches are sent at once)."""
        for edge in self.edges:
            edge.add_many(items)

    def flush(self) -> None:
        """Send every partial batch; the next flush is due ``linger_ms`` from now."""
        for edge in self.edges:
            edge.flush()
        self.deadline = time.monotonic() + self.linger_s

    def has_pending(self) -> bool:
        """True if items wait in a batch of some edge not sent yet."""
        return any(edge.has_pending() for edge in self.edges)

    def send_eos(self) -> None:
        """Flush, then send end of stream on every socket, behind the data."""
        for edge in self.edges:
            edge.send_eos()

    def close(self) -> None:
        for edge in self.edges:
            edge.close()
