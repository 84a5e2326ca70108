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
| broadcast, with restarts      | ``FanOutEdge`` | one PUSH per consumer replica            |
| a loop's feedback edge        | ``FeedbackEdge`` | one PUSH per consumer replica; spills  |

``make_edge`` (in ``outputs``) picks the class from the plan; a new grouping
is a class here and a line there.

In a run with restarts (``EdgePlan.acked``) every edge keeps what it sent
each consumer replica until that replica acknowledges it (a ``Keeper`` per
consumer, at most ``BufferSettings.kept_batches`` messages: sending waits beyond), binds a
back socket the acknowledgements arrive on, and sends end of stream only
once all it sent was acknowledged. When a consumer replica is restarted
(``rewire``), the edge connects to its new endpoint and sends it again, with
fresh sequence numbers, what it kept for it, as ``keeping`` says (suspects
one at a time, poison not at all).
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import zmq

from ..model.dsl import GroupingKind
from ..model.plan import ConnectPlan, EdgePlan, back_slot, broadcast_slot
from ..settings import Timeouts
from ..wire import serializers
from ..wire.frames import (
    HEADER_BYTES,
    SUBSCRIBE,
    Header,
    Kind,
    decode_header,
    encode_header,
    frames_size,
    identified_consumer,
    message,
    topic,
)
from ..wire.keys import replica_for_key
from .counters import Counters, EdgeCounters
from .failures import ProtocolError, SerializationError
from .keeping import Keeper, Sent
from .pipe import ControlPipe
from .sockets import Wiring, ready_to_read, send_frames
from .spill import Spill

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
    incarnation: int
    """Which start of this replica (0 the first); every header carries it."""
    consumer_node: int
    """The index of the downstream node (credit and acknowledgements must come from its replicas)."""
    connects: tuple[ConnectPlan, ...]
    """This edge's PUSH connects, one per consumer replica (none for a broadcast over XPUB)."""
    token: bytes
    wiring: Wiring
    control: ControlPipe
    """Waiting anywhere watches it, so a stop interrupts a replica blocked on backpressure."""
    counters: Counters
    timeouts: Timeouts
    service: Callable[[], None] = lambda: None
    """Called while the edge waits: applies restarted peers' new endpoints (with restarts), reads back sockets."""


class OutputEdge(Protocol):
    """One output edge of a replica; ``Outputs`` drives every edge through these calls, in this order."""

    plan: EdgePlan
    stats: EdgeCounters
    emitted: int
    """Items it was given so far."""

    @property
    def back_socket(self) -> zmq.Socket | None:
        """Where credit and acknowledgements arrive (None: consumers do not talk back on it)."""
    replayed: int
    """Items it sent again to restarted consumer replicas."""

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

    def read_back(self) -> None:
        """Take the credit and acknowledgements that arrived on the back socket."""

    def acked_prefix(self) -> int:
        """How many of the items given so far are in batches every consumer acknowledged (with restarts)."""

    def rewire(self, context: zmq.Context, consumer: int, incarnation: int, endpoint: str) -> None:
        """Consumer replica ``consumer`` was restarted at ``endpoint``: send it again all it was sent and kept."""

    def send_barrier(self, checkpoint: int) -> None:
        """Flush, then send the barrier of ``checkpoint`` to every consumer replica, behind the data."""

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
        self.emitted = 0
        self.replayed = 0
        self._dequeued = 0
        """Items taken from the queue into batches so far (the emission index of the queue's first item)."""
        self.keepers: list[Keeper] = []
        """Per consumer replica, what it was sent and has not acknowledged (only with restarts)."""
        self.generation: list[int] = []
        """Per consumer replica, how often it was rewired: a send that a rewire overtook is not repeated."""
        self._incarnations: list[int] = []
        self._back: zmq.Socket | None = None
        self._rejected = 0

    def bind(self, context: zmq.Context) -> dict[str, str]:
        """Bind the back socket, if consumers talk back on this edge (credit, acknowledgements)."""
        if not self.plan.has_back_channel:
            return {}
        setup = self.setup
        socket = setup.wiring.data_socket(context, zmq.PULL, self.buffers)
        socket.rcvhwm = 10_000  # a header each: credit and acknowledgements, a few per consumer at a time
        self._back = socket
        slot = back_slot(self.plan)
        return {slot: setup.wiring.bind(socket, f"{setup.replica_id}@{setup.incarnation}/{slot}")}

    def bound_sockets(self) -> list[zmq.Socket]:
        return [] if self._back is None else [self._back]

    @property
    def back_socket(self) -> zmq.Socket | None:
        """The socket credit and acknowledgements arrive on, if consumers talk back on this edge."""
        return self._back

    def wait_ready(self) -> None:
        return None

    def _open(self, count: int) -> None:
        """Per-consumer bookkeeping for ``count`` sockets."""
        self.seq = [0] * count
        self.keepers = [Keeper(self._split) for _ in range(count)]
        self.generation = [0] * count
        self._incarnations = [0] * count

    def deliver(self, index: int, kind: Kind, items: list[Any], first: int = 0) -> int:
        """Send a message to consumer ``index`` (kept, with restarts), waiting for room; returns its bytes."""
        payload = self._encode(items) if items else []
        if not self.plan.acked:
            seq = self.seq[index]
            self.seq[index] = seq + 1
            frames = message(self._header(kind, seq, len(items)), payload)
            self.send_waiting(index, frames)
            return frames_size(frames)
        self._wait_for_room_to_keep(index)
        kept = Sent(kind, payload, len(items), first)
        if self.keepers[index].keep(kept):
            self._send_kept(index, kept)
        return HEADER_BYTES + frames_size(payload)

    def try_deliver(self, index: int, items: list[Any], first: int) -> int | None:
        """Send a batch to consumer ``index`` if its queue has room now; its bytes, or None if it had none."""
        payload = self._encode(items)
        seq = self.seq[index]
        frames = message(self._header(Kind.BATCH, seq, len(items)), payload)
        try:
            send_frames(self.sockets[index], frames, zmq.NOBLOCK)
        except zmq.Again:
            return None
        self.seq[index] = seq + 1
        if self.plan.acked:
            self.keepers[index].keep(Sent(Kind.BATCH, payload, len(items), first, seq, sent=True))
        return frames_size(frames)

    def _send_kept(self, index: int, kept: Sent) -> None:
        kept.seq = self.seq[index]
        self.seq[index] += 1
        kept.sent = True
        if kept.deaths:
            self.replayed += kept.items
        self.send_waiting(index, message(self._header(kept.kind, kept.seq, kept.items), kept.payload))

    def _split(self, kept: Sent) -> list[Sent]:
        """A kept batch as single-item messages, in its order (a suspect at its second death)."""
        items = serializers.decode_items(self._serializer, kept.payload)
        return [Sent(Kind.BATCH, self._encode([item]), 1, kept.first, deaths=kept.deaths) for item in items]

    def _header(self, kind: Kind, seq: int, count: int) -> bytes:
        setup = self.setup
        return encode_header(setup.token, kind, self._serializer, setup.producer_node, setup.producer,
                             self.plan.port, setup.incarnation, seq, count)

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

    def account(self, items: list[Any], size: int) -> None:
        """Count a sent batch of ``size`` bytes, and size the next one from this one's bytes per item."""
        stats = self.stats
        stats.items += len(items)
        stats.batches += 1
        stats.bytes += size
        per_item = max(1, size // len(items))
        self.limit = max(1, min(self.buffers.batch_items, self.buffers.batch_bytes // per_item))

    def send_waiting(self, index: int, frames: list[Any]) -> None:
        """Send to consumer ``index``, waiting as long as it has no room (backpressure); raises ``Stopped``.

        With restarts, a rewire of the consumer while this waits has sent
        the message again (it was kept): then this send is dropped.
        """
        socket = self.sockets[index]
        try:
            send_frames(socket, frames, zmq.NOBLOCK)
            return
        except zmq.Again:
            pass
        generation = self.generation[index] if self.plan.acked else 0
        started = time.monotonic()
        try:
            while True:
                self._wait_a_little()
                if self.plan.acked and self.generation[index] != generation:
                    return
                try:
                    send_frames(self.sockets[index], frames, 0)  # blocks up to SNDTIMEO
                    return
                except zmq.Again:
                    continue
        finally:
            self.blocked_since(started)

    def _wait_a_little(self) -> None:
        """Between attempts of a waiting send: look for a stop, and (with restarts) serve rewires and acks."""
        self.setup.control.raise_if_stopped()
        if self.plan.acked:
            self.setup.service()

    def _wait_for_room_to_keep(self, index: int) -> None:
        """With restarts: wait while consumer ``index`` holds ``kept_batches`` unacknowledged batches."""
        limit = self.buffers.kept_batches
        if not self.plan.acked or len(self.keepers[index]) < limit:
            return
        started = time.monotonic()
        try:
            while len(self.keepers[index]) >= limit:
                self._wait_for_back(self.setup.timeouts.stop_check_ms)
        finally:
            self.blocked_since(started)

    def _wait_for_back(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for something on the back socket, then serve it (and rewires, stops)."""
        if self._back is not None:
            self._back.poll(timeout_ms)
        self._wait_a_little()
        self.read_back()

    def blocked_since(self, started: float) -> None:
        waited = time.monotonic() - started
        self.stats.blocked_s += waited
        self.setup.counters.blocked_s += waited

    def add_many(self, items: list[Any]) -> None:
        queue = self._queue
        queue.extend(items)
        self.emitted += len(items)
        while len(queue) >= (whole := self.whole()):
            batch = queue[:whole]
            del queue[:whole]
            self._take(batch)

    def whole(self) -> int:
        """How many queued items are sent at once (one full batch)."""
        return self.limit

    def flush(self) -> None:
        if self._queue:
            items, self._queue = self._queue, []
            self._take(items)

    def has_pending(self) -> bool:
        return bool(self._queue)

    def _take(self, batch: list[Any]) -> None:
        first = self._dequeued
        self._dequeued += len(batch)
        self._send(batch, first)

    def _send(self, items: list[Any], first: int) -> None:
        """Send ``items`` (the first has emission index ``first``) as one batch on the first socket."""
        self.account(items, self.deliver(0, Kind.BATCH, items, first))

    def acked_prefix(self) -> int:
        firsts = self._kept_firsts()
        if self._queue:
            firsts.append(self._dequeued)
        return min(firsts) if firsts else self.emitted

    def _kept_firsts(self) -> list[int]:
        return [first for keeper in self.keepers if (first := keeper.first_unacknowledged()) is not None]

    def read_back(self) -> None:
        socket = self._back
        if socket is None:
            return
        setup = self.setup
        while ready_to_read(socket):
            frames = socket.recv_multipart(zmq.NOBLOCK)
            header = decode_header(setup.token, frames[0]) if len(frames) == 1 else None
            if (header is None or header.kind not in (Kind.CREDIT, Kind.ACK) or header.node != setup.consumer_node
                    or header.port != self.plan.port or not 0 <= header.replica < self.plan.consumers):
                self._rejected += 1
                if self._rejected <= 5 or self._rejected % 1000 == 0:
                    log.warning("%s: rejected a %d-frame message on its back socket that is not from this run; "
                                "%d so far", self.plan.name, len(frames), self._rejected)
                continue
            if self.plan.acked and header.incarnation != self._incarnations[header.replica]:
                continue  # from a consumer replica since replaced (a zombie), or not yet rewired to
            if header.kind == Kind.CREDIT:
                self.granted(header.replica, header.items)
            elif header.items == setup.incarnation:  # an acknowledgement of what this incarnation sent
                self._acknowledged(header)

    def granted(self, consumer: int, items: int) -> None:
        """Credit came from ``consumer`` (only a demand-driven shuffle asks for it)."""

    def _acknowledged(self, header: Header) -> None:
        keeper = self.keepers[header.replica]
        keeper.acknowledged(header.seq)
        if keeper.probing:
            self._send_due(header.replica)

    def _send_due(self, index: int) -> None:
        for kept in self.keepers[index].to_send():
            self._send_kept(index, kept)

    def rewire(self, context: zmq.Context, consumer: int, incarnation: int, endpoint: str) -> None:
        old = self.sockets[consumer]
        old.close(linger=0)  # what waits in it was for the replica that is gone
        socket = self.setup.wiring.data_socket(context, zmq.PUSH, self.buffers)
        socket.sndtimeo = self.setup.timeouts.stop_check_ms
        socket.connect(endpoint)
        self.sockets[consumer] = socket
        self.seq[consumer] = 0
        self._incarnations[consumer] = incarnation
        self.generation[consumer] += 1
        self.restarted(consumer)
        self.keepers[consumer].restarted()
        self._send_due(consumer)

    def restarted(self, consumer: int) -> None:
        """``consumer`` is a new incarnation: forget what the old one granted (a demand-driven shuffle)."""

    def send_barrier(self, checkpoint: int) -> None:
        """Barriers are never kept: a run with checkpoints rolls back and acknowledges nothing."""
        assert not self.plan.acked, "a run with checkpoints acknowledges nothing"
        self.flush()
        for index in range(len(self.sockets)):
            seq = self.seq[index]
            self.seq[index] = seq + 1
            self.send_waiting(index, message(self._header(Kind.BARRIER, seq, checkpoint), []))

    def send_eos(self) -> None:
        self.flush()
        if self.plan.acked:
            self._wait_until_acknowledged()
        self._send_eos()

    def _wait_until_acknowledged(self) -> None:
        """With restarts, end of stream waits until all sent was acknowledged: no replay can come after it."""
        while self.acked_prefix() < self.emitted:
            self._wait_for_back(self.setup.timeouts.stop_check_ms)

    def _send_eos(self) -> None:
        for index in range(len(self.sockets)):
            self.deliver(index, Kind.EOS, [], self.emitted)

    def close(self) -> None:
        for socket in self.sockets:
            socket.close(linger=0)
        if self._back is not None:
            self._back.close(linger=0)


class PushEdge(BatchingEdge):
    """shuffle to a single consumer replica: one PUSH socket per consumer, batches in order as they fill."""

    def connect(self, context: zmq.Context, address_book: AddressBook) -> None:
        for connect in self.setup.connects:
            socket = self.setup.wiring.data_socket(context, zmq.PUSH, self.buffers)
            socket.sndtimeo = self.setup.timeouts.stop_check_ms
            socket.connect(address_book[connect.peer][connect.slot])
            self.sockets.append(socket)
        self._open(len(self.sockets))


class FanOutEdge(PushEdge):
    """broadcast in a run with restarts: every batch to every consumer replica's PUSH, kept for each."""

    def _send(self, items: list[Any], first: int) -> None:
        payload = self._encode(items)
        for index in range(len(self.sockets)):
            self._wait_for_room_to_keep(index)
            kept = Sent(Kind.BATCH, payload, len(items), first)
            if self.keepers[index].keep(kept):
                self._send_kept(index, kept)
        self.account(items, HEADER_BYTES + frames_size(payload))  # one batch on the edge, as over XPUB


class KeyedEdge(PushEdge):
    """by_key: the consumer replica comes from a stable hash of the key (cached for str and int keys)."""

    def __init__(self, setup: EdgeSetup) -> None:
        super().__init__(setup)
        key = self.plan.grouping.key
        self._key: Callable[[Any], Any] = key if callable(key) else operator.itemgetter(key)
        self._replica_of: dict[Any, int] = {}
        self._pending: list[list[Any]] = [[] for _ in range(self.plan.consumers)]
        self._pending_first = [0] * self.plan.consumers
        """With restarts: the emission index of each consumer's first pending item."""

    def add_many(self, items: list[Any]) -> None:
        key, replica_of, pending = self._key, self._replica_of, self._pending
        consumers = self.plan.consumers
        acked, index = self.plan.acked, self.emitted
        self.emitted += len(items)
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
            if acked:
                if not batch:
                    self._pending_first[consumer] = index
                index += 1
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

    def acked_prefix(self) -> int:
        firsts = self._kept_firsts()
        firsts += [first for first, batch in zip(self._pending_first, self._pending, strict=True) if batch]
        return min(firsts) if firsts else self.emitted

    def _send_to(self, consumer: int, items: list[Any]) -> None:
        self.account(items, self.deliver(consumer, Kind.BATCH, items, self._pending_first[consumer]))


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
        self._open(1)
        slot = broadcast_slot(self.plan)
        return {slot: setup.wiring.bind(socket, f"{setup.replica_id}@{setup.incarnation}/{slot}")}

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

    def rewire(self, context: zmq.Context, consumer: int, incarnation: int, endpoint: str) -> None:
        raise AssertionError("a broadcast over XPUB is never rewired: with restarts, broadcast is a FanOutEdge")


class FeedbackEdge(KeyedEdge):
    """A loop's way back (``feedback(...)``): by key, or round robin for a shuffle; it never waits for room.

    A message its consumer has no room for waits in a ``Spill`` (memory up
    to the edge's ``memory_budget_bytes`` per consumer replica, then disk),
    behind which later messages queue; every flush sends from the spills
    what fits. Only end of stream, which comes once the loop drained (its
    consumer reads everything then), waits for the spills to empty.
    """

    def __init__(self, setup: EdgeSetup) -> None:
        super().__init__(setup)
        self.spills = [Spill(self.buffers.memory_budget_bytes) for _ in range(self.plan.consumers)]
        self._turn = 0
        self._draining = False

    def add_many(self, items: list[Any]) -> None:
        if self.plan.grouping.kind is not GroupingKind.SHUFFLE:
            super().add_many(items)
            return
        pending, consumers, turn = self._pending, self.plan.consumers, self._turn
        self.emitted += len(items)
        for item in items:
            batch = pending[turn]
            batch.append(item)
            if len(batch) >= self.limit:
                pending[turn] = []
                self._send_to(turn, batch)
            turn = (turn + 1) % consumers
        self._turn = turn

    @property
    def spill_backlog(self) -> int:
        """Messages waiting in the spills now."""
        return sum(len(spill) for spill in self.spills)

    def send_waiting(self, index: int, frames: list[Any]) -> None:
        spill = self.spills[index]
        if self._draining or not spill:
            try:
                send_frames(self.sockets[index], frames, zmq.NOBLOCK)
                return
            except zmq.Again:
                if self._draining:
                    super().send_waiting(index, frames)
                    return
        if spill.push(frames):
            self.setup.counters.spilled += 1
        self._send_spilled(index)

    def flush(self) -> None:
        super().flush()
        for index in range(len(self.spills)):
            self._send_spilled(index)

    def send_eos(self) -> None:
        self.flush()
        self._draining = True
        for index, spill in enumerate(self.spills):
            while (frames := spill.peek()) is not None:
                super().send_waiting(index, frames)
                spill.pop()
        super().send_eos()

    def _send_spilled(self, index: int) -> None:
        """Send what the consumer has room for now, oldest first."""
        spill, socket = self.spills[index], self.sockets[index]
        while (frames := spill.peek()) is not None:
            try:
                send_frames(socket, frames, zmq.NOBLOCK)
            except zmq.Again:
                return
            spill.pop()

    def close(self) -> None:
        for spill in self.spills:
            spill.close()
        super().close()
