"""The demand-driven shuffle, both halves: consumers grant credit, producers send no more than granted.

A shuffle edge to several consumer replicas does not deal items out ahead
of time: a producer sends a consumer only as many items as that consumer
granted (Flink's credit-based flow control, made load-aware). So a replica
on a slower core gets less work, and a short stream of expensive items is
still spread over the replicas.

- Consumer (``Grants``, in the consumer's ``Inputs``): it grants each
  producer credit for about ``CREDIT_QUEUE_S`` of its own measured work
  (``credit_window``: busy seconds over items in, at least one item, or its
  ``concurrency=``, which it takes at once; at most what the edge's ZeroMQ
  queues hold anyway) and tops a grant up when half
  of it has arrived (``credit_to_grant``). Before it measured anything it
  counts on ``CREDIT_START_ITEMS``, which its producers assume too. Credit
  is counted when a batch is received, not when it was processed: what a
  consumer owes its producers is what waits in the queues for it.
- Producer (``DemandEdge``, an output edge): items wait in one queue, in
  the order they were emitted; a batch is split into consecutive parts, one
  per consumer that has credit, taking turns which goes first
  (``split_parts``), each as large as its credit allows. So every consumer
  gets its items in emission order (FIFO per pair). With no credit anywhere
  the producer waits (backpressure). End of stream needs no credit.

Credit travels as header-only messages (``Kind.CREDIT``) on a PUSH from each
consumer replica to a PULL each producer replica binds (plan slot
``credit:<consumer node>``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from ..model.plan import Plan, ReplicaPlan, back_slot, replica_id
from ..wire.frames import Kind, Sender, encode_header
from .counters import Counters
from .edges import AddressBook, EdgeSetup, PushEdge
from .sockets import Wiring

log = logging.getLogger(__name__)

CREDIT_START_ITEMS = 64
"""Credit each consumer replica of a demand-driven shuffle edge has before it granted any."""
CREDIT_QUEUE_S = 0.02
"""A consumer grants credit for about this much work (its measured seconds per item)."""


def credit_window(busy_s: float, items_in: int, most: int, least: int = 1) -> int:
    """How many items a consumer wants waiting for it: ``CREDIT_QUEUE_S`` of its work, from ``least`` to ``most``.

    ``least`` is the consumer's ``concurrency``: it takes that many items at
    once, so fewer waiting would starve it (its measured seconds per item,
    wall time over items, would then grow and ask for less still).

    >>> credit_window(0.0, 0, 8192), credit_window(1.0, 1000, 8192), credit_window(10.0, 10, 8192)
    (64, 20, 1)
    >>> credit_window(10.0, 10, 8192, least=32), credit_window(10.0, 10, 16, least=32)
    (32, 16)
    """
    if busy_s <= 0 or items_in <= 0:
        return min(max(CREDIT_START_ITEMS, least), most)
    return max(1, min(most, max(least, int(items_in / busy_s * CREDIT_QUEUE_S))))


def credit_to_grant(granted: int, received: int, window: int) -> int:
    """More credit to grant a producer: none while more than half the window still waits, else up to the window.

    >>> credit_to_grant(64, 10, 64), credit_to_grant(64, 40, 64)
    (0, 40)
    """
    waiting = granted - received
    return 0 if waiting > window // 2 else window - waiting


def split_parts(count: int, credit: Sequence[int], turn: int, limit: int) -> list[tuple[int, int]]:
    """How ``count`` queued items leave in one round: ``(consumer, items)`` parts, consecutive and in order.

    Consumers with credit take turns from ``turn``; each part is an equal
    share of the items, cut to the consumer's credit and to ``limit`` (a
    batch). What the parts leave is sent in a later round, when more
    credit came.

    >>> split_parts(10, [64, 64], 1, 1024), split_parts(10, [0, 3, 64], 0, 1024)
    ([(1, 5), (0, 5)], [(1, 3), (2, 5)])
    """
    consumers = len(credit)
    ready = [index for index in (*range(turn, consumers), *range(turn)) if credit[index] > 0]
    if not ready:
        return []
    share = -(-count // len(ready))
    parts, left = [], count
    for index in ready:
        size = min(share, credit[index], limit, left)
        parts.append((index, size))
        left -= size
        if not left:
            break
    return parts


@dataclass
class _Grant:
    """What one consumer replica granted one producer replica, and what arrived."""

    producer_id: str
    slot: str
    """The producer's credit socket for this edge."""
    port: int
    most: int
    """The largest grant: what the edge's queues hold (high-water mark times items per batch)."""
    granted: int = CREDIT_START_ITEMS
    received: int = 0
    socket: zmq.Socket | None = None


class Grants:
    """Credit this replica grants the producers of its demand-driven shuffle inputs (the consumer's half)."""

    def __init__(self, plan: Plan, replica: ReplicaPlan, incarnation: int, token: bytes, wiring: Wiring,
                 counters: Counters) -> None:
        self._counters = counters
        self._wiring = wiring
        self._token = token
        self._node = plan.node(replica.node).index
        self._concurrency = plan.node(replica.node).concurrency
        self._replica = replica.index
        self._incarnation = incarnation
        self._grants: dict[Sender, _Grant] = {
            (plan.node(edge.upstream).index, producer, edge.port): _Grant(
                replica_id(edge.upstream, producer), back_slot(edge), edge.port,
                edge.buffers.effective_hwm * edge.buffers.batch_items)
            for edge in plan.edges_into(replica.node) if edge.uses_credit
            for producer in range(edge.producers)
        }
        self._owed: set[Sender] = set()
        """Producers whose grant could not be sent (their queue was full): tried again before waiting."""

    def connect(self, context: zmq.Context, address_book: AddressBook) -> None:
        for grant in self._grants.values():
            grant.socket = self._wiring.back_socket(context, address_book[grant.producer_id][grant.slot])

    def rewire(self, context: zmq.Context, producer_id: str, endpoints: AddressBook) -> None:
        """Producer ``producer_id`` was restarted: grant to its new credit socket, from the start."""
        for grant in self._grants.values():
            if grant.producer_id == producer_id:
                if grant.socket is not None:
                    grant.socket.close(linger=0)
                grant.granted, grant.received = CREDIT_START_ITEMS, 0
                grant.socket = self._wiring.back_socket(context, endpoints[producer_id][grant.slot])

    def received(self, producer: Sender, items: int) -> None:
        """``items`` arrived from ``producer`` (node, replica, port); grant more once half of the grant arrived."""
        grant = self._grants.get(producer)
        if grant is not None:
            grant.received += items
            self._top_up(producer, grant)

    def restarted(self, producer: Sender) -> None:
        """``producer`` is a new incarnation: it counts on the start credit, and so does this side."""
        grant = self._grants.get(producer)
        if grant is not None:
            grant.granted, grant.received = CREDIT_START_ITEMS, 0

    def retry(self) -> None:
        """Send the grants that could not be sent before (call before waiting for input)."""
        for producer in list(self._owed):
            self._top_up(producer, self._grants[producer])

    def _top_up(self, producer: Sender, grant: _Grant) -> None:
        window = credit_window(self._counters.busy_s, self._counters.items_in, grant.most, self._concurrency)
        more = credit_to_grant(grant.granted, grant.received, window)
        if not more:
            return
        header = encode_header(self._token, Kind.CREDIT, 0, self._node, self._replica, grant.port, self._incarnation,
                               0, more)
        assert grant.socket is not None, "connect() comes first"
        try:
            grant.socket.send(header, zmq.NOBLOCK)
        except zmq.Again:
            self._owed.add(producer)
            return
        self._owed.discard(producer)
        grant.granted += more

    def close(self) -> None:
        for grant in self._grants.values():
            if grant.socket is not None:
                grant.socket.close(linger=0)


class DemandEdge(PushEdge):
    """shuffle to several consumer replicas: each gets no more items than it granted credit for."""

    def __init__(self, setup: EdgeSetup) -> None:
        super().__init__(setup)
        self._credit = [CREDIT_START_ITEMS] * self.plan.consumers
        self._turn = 0

    def whole(self) -> int:
        return self.limit * len(self.sockets)  # a full batch for every consumer

    def granted(self, consumer: int, items: int) -> None:
        self._credit[consumer] += items

    def restarted(self, consumer: int) -> None:
        self._credit[consumer] = CREDIT_START_ITEMS  # what the new incarnation counts on before it grants

    def _send(self, items: list[Any], first: int) -> None:
        """Send ``items`` in consecutive parts to consumers with credit, waiting for credit if none has."""
        started = None
        while items:
            self.read_back()
            sent = 0
            parts = split_parts(len(items), self._usable_credit(), self._turn, self.limit)
            for consumer, size in parts:
                part = items[sent:sent + size]
                delivered = self.try_deliver(consumer, part, first + sent)
                if delivered is None:  # its queue is full all the same
                    break  # the next part starts here: items leave in order
                self._credit[consumer] -= size
                self.account(part, delivered)
                sent += size
                self._turn = (consumer + 1) % len(self.sockets)
            items, first = items[sent:], first + sent
            if items and not sent:
                started = started or time.monotonic()
                ready = [consumer for consumer, credit in enumerate(self._usable_credit()) if credit > 0]
                self._waiting_poller(ready).poll(self.setup.timeouts.stop_check_ms)
                self._wait_a_little()
        if started is not None:
            self.blocked_since(started)

    def _usable_credit(self) -> list[int]:
        """Each consumer's credit; with restarts none for one that holds ``kept_batches`` unacknowledged, or whose
        suspects go out one at a time after a restart (the others take the new items meanwhile)."""
        if not self.plan.acked:
            return self._credit
        limit = self.buffers.kept_batches
        return [credit if len(keeper) < limit and not keeper.probing else 0
                for credit, keeper in zip(self._credit, self.keepers, strict=True)]

    def _waiting_poller(self, ready: list[int]) -> zmq.Poller:
        """What to wait for: credit or acknowledgements, a stop, and room in the queues of consumers with credit."""
        poller = zmq.Poller()
        for socket in (self._back, self.setup.control.socket):
            poller.register(socket, zmq.POLLIN)
        for index in ready:
            poller.register(self.sockets[index], zmq.POLLOUT)
        return poller
