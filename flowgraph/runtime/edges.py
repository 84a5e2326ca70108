"""Output edges: one object per output edge of a replica, all speaking ``OutputEdge``.

An edge batches the items it is given, sends a batch only when its socket
has room (so a slow consumer slows its producers) and sends end of stream
behind the last batch on every socket, so EOS never overtakes data.

| grouping                      | class         | sockets                                   |
|-------------------------------|---------------|-------------------------------------------|
| shuffle to one consumer       | ``PushEdge``  | one PUSH per consumer replica             |
| shuffle to several consumers  | ``DemandEdge`` (``demand``) | PUSH, and a bound credit PULL |
| by_key                        | ``KeyedEdge`` | one PUSH per consumer replica             |
| broadcast                     | ``BroadcastEdge`` | one bound XPUB (never drops)          |

``make_edge`` (in ``outputs``) picks the class from the plan; a new grouping
is a class here and a line there.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import zmq

from ..model.plan import ConnectPlan, EdgePlan, broadcast_slot
from ..settings import Timeouts
from ..wire import serializers
from ..wire.frames import SUBSCRIBE, Kind, encode_header, frames_size, identified_consumer, message, topic
from ..wire.keys import replica_for_key
from .counters import Counters, EdgeCounters
from .failures import ProtocolError, SerializationError
from .pipe import ControlPipe
from .sockets import Wiring, send_frames

log = logging.getLogger(__name__)

AddressBook = Mapping[str, Mapping[str, str]]
"""Every replica's bound endpoints: ``{replica id: {slot: endpoint}}``."""

_KEY_CACHE_SIZE = 100_000


@dataclass(frozen=True)
class EdgeSetup:
    """What every output edge of a replica is made from."""

    plan: EdgePlan
    producer_node: int
    """The index of this replica's node in the plan (every header carries it)."""
    producer: int
    """This replica's index."""
    replica_id: str
    consumer_node: int
    """The index of the downstream node (credit must come from its replicas)."""
    connects: tuple[ConnectPlan, ...]
    """This edge's PUSH connects, one per consumer replica (none for broadcast)."""
    token: bytes
    wiring: Wiring
    control: ControlPipe
    """Waiting anywhere watches it, so a stop interrupts a replica blocked on backpressure."""
    counters: Counters
    timeouts: Timeouts


class OutputEdge(Protocol):
    """One output edge of a replica; ``Outputs`` drives every edge through these calls, in this order."""

    plan: EdgePlan
    stats: EdgeCounters

    def bind(self, context: zmq.Context) -> dict[str, str]:
        """Create and bind the sockets peers connect to; returns ``{slot: endpoint}`` for the address book."""

    def bound_sockets(self) -> list[zmq.Socket]:
        """The sockets ``bind`` made (strangers can connect to them: their handshakes are monitored)."""

    def connect(self, context: zmq.Context, address_book: AddressBook) -> None:
        """Create and connect the sockets that reach the consumer replicas."""

    def wait_ready(self) -> None:
        """Return once every consumer replica can receive (broadcast: every subscription arrived)."""

    def add_many(self, items: list[Any]) -> None:
        """Take ``items`` (emission order); send what makes full batches, waiting while consumers have no room."""

    def flush(self) -> None:
        """Send every item taken and not sent yet."""

    def has_pending(self) -> bool:
        """True if items wait that were not sent yet."""

    def send_eos(self) -> None:
        """Flush, then send end of stream to every consumer replica, behind the data."""

    def close(self) -> None:
        """Close without linger: called after shutdown, when every consumer already has everything."""


class BatchingEdge:
    """What every edge shares: batch size, encoding, headers and sequence numbers, waiting sends, stats.

    Pending items wait in one queue, in emission order, and leave in
    batches through ``_send``; a subclass decides where a batch goes.
    """

    def __init__(self, setup: EdgeSetup) -> None:
        self.plan = setup.plan
        self.stats = EdgeCounters()
        self.setup = setup
        self.buffers = setup.plan.buffers
        self.limit = 1
        """Items per batch: adapted after each batch so a batch is about ``batch_bytes``."""
        self._encoder = serializers.ENCODERS[self.buffers.serializer]()
        self._serializer = serializers.serializer_id(self.buffers.serializer)
        self.sockets: list[zmq.Socket] = []
        self.seq: list[int] = []
        """The next sequence number on each socket (the consumer checks them: nothing lost or repeated)."""
        self._queue: list[Any] = []

    def bind(self, context: zmq.Context) -> dict[str, str]:
        return {}

    def bound_sockets(self) -> list[zmq.Socket]:
        return []

    def wait_ready(self) -> None:
        return None

    def frames(self, socket_index: int, kind: Kind, items: list[Any]) -> list[Any]:
        """Header and payload of the next message on socket ``socket_index``."""
        payload = self._encode(items) if items else []
        seq = self.seq[socket_index]
        self.seq[socket_index] = seq + 1
        setup = self.setup
        header = encode_header(setup.token, kind, self._serializer, setup.producer_node, setup.producer, seq,
                               len(items))
        return message(header, payload)

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
                        f"{self.buffers.serializer} cannot encode an item of type {type(item).__name__} for edge "
                        f"{self.plan.name!r} ({type(item_error).__name__}: {item_error}); convert the item, or "
                        f"choose another serializer for the edge or the topology"
                    ) from item_error
            raise

    def account(self, items: list[Any], frames: list[Any]) -> None:
        """Count a sent batch, and size the next one from this one's bytes per item."""
        size = frames_size(frames)
        stats = self.stats
        stats.items += len(items)
        stats.batches += 1
        stats.bytes += size
        per_item = max(1, size // len(items))
        self.limit = max(1, min(self.buffers.batch_items, self.buffers.batch_bytes // per_item))

    def send_waiting(self, socket: zmq.Socket, frames: list[Any]) -> None:
        """Send, waiting as long as the consumer has no room (backpressure); raises ``Stopped``."""
        try:
            send_frames(socket, frames, zmq.NOBLOCK)
            return
        except zmq.Again:
            pass
        started = time.monotonic()
        try:
            while True:
                self.setup.control.raise_if_stopped()
                try:
                    send_frames(socket, frames, 0)  # blocks up to SNDTIMEO
                    return
                except zmq.Again:
                    continue
        finally:
            self.blocked_since(started)

    def blocked_since(self, started: float) -> None:
        waited = time.monotonic() - started
        self.stats.blocked_s += waited
        self.setup.counters.blocked_s += waited

    def add_many(self, items: list[Any]) -> None:
        queue = self._queue
        queue.extend(items)
        while len(queue) >= (whole := self.whole()):
            batch = queue[:whole]
            del queue[:whole]
            self._send(batch)

    def whole(self) -> int:
        """How many queued items are sent at once (one full batch)."""
        return self.limit

    def flush(self) -> None:
        if self._queue:
            items, self._queue = self._queue, []
            self._send(items)

    def has_pending(self) -> bool:
        return bool(self._queue)

    def _send(self, items: list[Any]) -> None:
        """Send ``items`` as one batch on the first socket, waiting while its queue is full."""
        frames = self.frames(0, Kind.BATCH, items)
        self.send_waiting(self.sockets[0], frames)
        self.account(items, frames)

    def close(self) -> None:
        for socket in self.sockets:
            socket.close(linger=0)


class PushEdge(BatchingEdge):
    """shuffle to a single consumer replica: one PUSH socket per consumer, batches in order as they fill."""

    def connect(self, context: zmq.Context, address_book: AddressBook) -> None:
        for connect in self.setup.connects:
            socket = self.setup.wiring.data_socket(context, zmq.PUSH, self.buffers)
            socket.sndtimeo = self.setup.timeouts.stop_check_ms
            socket.connect(address_book[connect.peer][connect.slot])
            self.sockets.append(socket)
        self.seq = [0] * len(self.sockets)

    def send_eos(self) -> None:
        self.flush()
        for index, socket in enumerate(self.sockets):
            self.send_waiting(socket, self.frames(index, Kind.EOS, []))


class KeyedEdge(PushEdge):
    """by_key: the consumer replica comes from a stable hash of the key (cached for str and int keys)."""

    def __init__(self, setup: EdgeSetup) -> None:
        super().__init__(setup)
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
            if len(batch) >= self.limit:
                pending[consumer] = []
                self._send_to(consumer, batch)

    def flush(self) -> None:
        for consumer, batch in enumerate(self._pending):
            if batch:
                self._pending[consumer] = []
                self._send_to(consumer, batch)

    def has_pending(self) -> bool:
        return any(self._pending)

    def _send_to(self, consumer: int, items: list[Any]) -> None:
        frames = self.frames(consumer, Kind.BATCH, items)
        self.send_waiting(self.sockets[consumer], frames)
        self.account(items, frames)


class BroadcastEdge(BatchingEdge):
    """broadcast: one XPUB socket reaching every consumer replica; never drops."""

    def bind(self, context: zmq.Context) -> dict[str, str]:
        setup = self.setup
        socket = setup.wiring.data_socket(context, zmq.XPUB, self.buffers)
        socket.setsockopt(zmq.XPUB_NODROP, 1)  # a PUB at its HWM silently drops
        socket.setsockopt(zmq.XPUB_MANUAL, 1)  # we decide which subscriptions count
        socket.rcvhwm = 1000  # per peer: only subscriptions arrive here, a few per consumer
        socket.sndtimeo = setup.timeouts.stop_check_ms  # POLLOUT is always set with NODROP: wait in send
        self.sockets = [socket]
        self.seq = [0]
        slot = broadcast_slot(self.plan.downstream)
        return {slot: setup.wiring.bind(socket, f"{setup.replica_id}/{slot}")}

    def bound_sockets(self) -> list[zmq.Socket]:
        return list(self.sockets)

    def connect(self, context: zmq.Context, address_book: AddressBook) -> None:
        return None  # consumers connect to the XPUB

    def wait_ready(self) -> None:
        """Apply valid subscriptions until every consumer replica subscribed (slow joiners)."""
        socket, setup = self.sockets[0], self.setup
        data_topic = topic(setup.token)
        seen: set[int] = set()
        deadline = time.monotonic() + setup.timeouts.subscribe_s
        while len(seen) < self.plan.consumers:
            if not socket.poll(setup.timeouts.stop_check_ms):
                setup.control.raise_if_stopped()
                if time.monotonic() > deadline:
                    missing = sorted(set(range(self.plan.consumers)) - seen)
                    raise ProtocolError(
                        f"{self.plan.name}: replicas {missing} of {self.plan.downstream!r} did not "
                        f"subscribe within {setup.timeouts.subscribe_s:g} s"
                    )
                continue
            subscription = socket.recv()
            consumer = identified_consumer(setup.token, subscription)
            if subscription == SUBSCRIBE + data_topic:
                socket.setsockopt(zmq.SUBSCRIBE, data_topic)
            elif consumer is not None:
                seen.add(consumer)
            elif subscription[:1] == SUBSCRIBE:
                log.warning("%s: ignored a subscription that is not from this run", self.plan.name)

    def send_eos(self) -> None:
        self.flush()
        self.send_waiting(self.sockets[0], self.frames(0, Kind.EOS, []))
