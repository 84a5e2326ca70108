"""Acknowledgements, in a run with restarts: a consumer tells each producer which of its batches it is done with.

A replica is done with an input batch once it processed the batch and
everything it emitted meanwhile was acknowledged by its own consumers (a
sink: once processed, and its ``flush()``, if it has one, made it durable).
So, by induction from the sinks, an acknowledged batch was fully processed
everywhere downstream, and a batch not yet acknowledged is still kept by its
producer (``edges.Sent``). When a replica dies, its producers send it again
all they kept for it (``OutputEdge.rewire``): every item not fully processed
is delivered again, at least once.

The watermark of a processed batch is how many items each output edge had
been given when the batch was done (``Outputs.watermark``); it is done once
every edge is acknowledged that far (``Outputs.acked_prefixes``). Batches
are done in the order they were processed, so one look at the oldest
suffices. An acknowledgement names the newest batch done of a producer
(``Kind.ACK``: its ``seq``, and the producer's incarnation in ``items``),
and goes out with the next flush.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from ..model.plan import Plan, ReplicaPlan, back_slot, replica_id
from ..wire.frames import Kind, Sender, encode_header
from .edges import AddressBook
from .sockets import Wiring

SINK_ACK_INTERVAL_S = 0.05
"""A sink with a ``flush()`` flushes and acknowledges at most this often (each flush makes its writes durable)."""


@dataclass
class _Link:
    """This replica's way back to one producer replica on one edge."""

    producer_id: str
    slot: str
    port: int
    socket: zmq.Socket | None = None
    incarnation: int = 0
    """The producer's incarnation its batches came from lately."""
    done: int = -1
    """The newest of its batches this replica is done with."""
    told: int = -1
    """The newest acknowledgement sent."""


@dataclass(frozen=True)
class _Processed:
    sender: Sender
    incarnation: int
    seq: int
    watermark: tuple[int, ...]


class Acknowledger:
    """What this replica owes its producers: which of their batches it is done with."""

    def __init__(self, plan: Plan, replica: ReplicaPlan, incarnation: int, token: bytes, wiring: Wiring,
                 before_ack: Callable[[], None] | None = None, clock: Callable[[], float] | None = None) -> None:
        """``before_ack`` (a sink's ``flush``) runs before acknowledgements go out, at most every
        ``SINK_ACK_INTERVAL_S``."""
        self._token = token
        self._wiring = wiring
        self._node = plan.node(replica.node).index
        self._replica = replica.index
        self._incarnation = incarnation
        self._links: dict[Sender, _Link] = {
            (plan.node(edge.upstream).index, producer, edge.port): _Link(
                replica_id(edge.upstream, producer), back_slot(edge), edge.port)
            for edge in plan.edges_into(replica.node) if edge.acked
            for producer in range(edge.producers)
        }
        self._processed: deque[_Processed] = deque()
        self.before_ack = before_ack
        """A sink's ``flush()``, set once the replica made its operator."""
        self._clock = clock or time.monotonic
        self._next_ack = 0.0

    @property
    def active(self) -> bool:
        """True if this replica acknowledges anything (its inputs are acknowledged: a run with restarts)."""
        return bool(self._links)

    def connect(self, context: zmq.Context, address_book: AddressBook) -> None:
        for link in self._links.values():
            link.socket = self._wiring.back_socket(context, address_book[link.producer_id][link.slot])

    def rewire(self, context: zmq.Context, producer_id: str, endpoints: AddressBook) -> None:
        """Producer ``producer_id`` was restarted: reach it at its new endpoints."""
        for link in self._links.values():
            if link.producer_id == producer_id:
                assert link.socket is not None, "connect() comes first"
                link.socket.close(linger=0)
                link.socket = self._wiring.back_socket(context, endpoints[producer_id][link.slot])

    def arrived(self, sender: Sender, incarnation: int) -> None:
        """A message of ``sender``'s ``incarnation`` arrived: a newer one than before makes the older batches moot."""
        link = self._links.get(sender)
        if link is not None and incarnation != link.incarnation:
            link.incarnation, link.done, link.told = incarnation, -1, -1
            self._processed = deque(entry for entry in self._processed if entry.sender != sender)

    def processed(self, sender: Sender, incarnation: int, seq: int, watermark: tuple[int, ...]) -> None:
        """Batch ``seq`` of ``sender`` was processed; ``watermark``: how far each output edge was given items."""
        if sender in self._links:
            self._processed.append(_Processed(sender, incarnation, seq, watermark))

    def send(self, acked: tuple[int, ...], idle: bool = False) -> None:
        """Acknowledge every batch done, now that each output edge is acknowledged up to ``acked``.

        A sink's ``flush()`` runs first, at most every ``SINK_ACK_INTERVAL_S``
        while it is busy, at once when it is ``idle`` (nothing more came:
        its producer may wait for this acknowledgement).
        """
        processed = self._processed
        if not processed:
            return
        if self.before_ack is not None:
            now = self._clock()
            if now < self._next_ack and not idle:
                return
            self._next_ack = now + SINK_ACK_INTERVAL_S
            self.before_ack()
        while processed and all(done <= upto for done, upto in zip(processed[0].watermark, acked, strict=True)):
            entry = processed.popleft()
            link = self._links[entry.sender]
            if entry.incarnation == link.incarnation:
                link.done = max(link.done, entry.seq)
        for link in self._links.values():
            if link.done > link.told and link.socket is not None:
                header = encode_header(self._token, Kind.ACK, 0, self._node, self._replica, link.port,
                                       self._incarnation, link.done, link.incarnation)
                try:
                    link.socket.send(header, zmq.NOBLOCK)
                except zmq.Again:
                    continue  # its queue is full: the next acknowledgement says as much
                link.told = link.done

    def close(self) -> None:
        for link in self._links.values():
            if link.socket is not None:
                link.socket.close(linger=0)
