"""The sending end of a replica: its output edges, driven together.

``Outputs`` hands every emitted item to every output edge of the node's
items, and every dead letter to every edge of its error stream (each edge
batches, waits for room, sends end of stream behind its data: see
``edges``), and keeps the one deadline by which partial batches are due.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from ..model.dsl import ERRORS, ITEMS, GroupingKind
from ..model.plan import IN_SLOT
from ..model.policy import DeadLetter
from .counters import Counters
from .demand import DemandEdge
from .edges import AddressBook, BroadcastEdge, EdgeSetup, FanOutEdge, FeedbackEdge, KeyedEdge, OutputEdge, PushEdge

_EDGES: dict[GroupingKind, Callable[[EdgeSetup], OutputEdge]] = {
    GroupingKind.SHUFFLE: PushEdge, GroupingKind.BY_KEY: KeyedEdge, GroupingKind.BROADCAST: BroadcastEdge,
}


def make_edge(setup: EdgeSetup) -> OutputEdge:
    """The output edge the plan asks for: a demand-driven shuffle to several consumers, a broadcast that
    restarts may rewire (a PUSH to each consumer), else by grouping."""
    if setup.plan.feedback:
        return FeedbackEdge(setup)
    if setup.plan.uses_credit:
        return DemandEdge(setup)
    if setup.plan.grouping.kind is GroupingKind.BROADCAST and setup.plan.acked:
        return FanOutEdge(setup)
    return _EDGES[setup.plan.grouping.kind](setup)


class Outputs:
    """The sending side of a replica: one ``OutputEdge`` per output edge."""

    def __init__(self, setups: Iterable[EdgeSetup]) -> None:
        setups = tuple(setups)
        self.edges = tuple(make_edge(setup) for setup in setups)
        self._items = tuple(edge for edge in self.edges if edge.plan.stream == ITEMS)
        self._errors = tuple(edge for edge in self.edges if edge.plan.stream == ERRORS)
        self._counters = setups[0].counters if setups else Counters()  # without edges nothing counts here
        self._loop_fanout = _loop_fanout(self._items)
        """How many consumer replicas in its loop each item reaches (the loop's termination counts them)."""
        self._loop_letter_fanout = _loop_fanout(self._errors)
        self._feedback = tuple(edge for edge in self.edges if isinstance(edge, FeedbackEdge))
        self.emits_items = bool(self._items)
        """True if some node takes this node's items (a sink's, and a node's nobody takes, are dropped)."""
        self.linger_s = min((edge.plan.buffers.linger_ms for edge in self.edges), default=5.0) / 1000
        """Partial batches are due this long after the last flush (the smallest ``linger_ms`` of the edges)."""
        self.chunk_items = min((edge.plan.buffers.batch_items for edge in self.edges), default=1)
        """How many items a source gathers before handing them on: at most one batch of any edge."""
        self.deadline = time.monotonic() + self.linger_s
        """When partial batches are due: ``linger_ms`` after the last flush."""

    def bind(self, context: zmq.Context) -> dict[str, str]:
        """Create and bind what peers connect to (XPUB, credit sockets); returns ``{slot: endpoint}``."""
        return {slot: endpoint for edge in self.edges for slot, endpoint in edge.bind(context).items()}

    def bound_sockets(self) -> list[zmq.Socket]:
        """The sockets ``bind`` made (strangers can connect to them)."""
        return [socket for edge in self.edges for socket in edge.bound_sockets()]

    def back_sockets(self) -> list[zmq.Socket]:
        """The sockets credit and acknowledgements arrive on."""
        return [socket for edge in self.edges if (socket := edge.back_socket) is not None]

    def connect(self, context: zmq.Context, address_book: AddressBook) -> None:
        for edge in self.edges:
            edge.connect(context, address_book)

    def wait_ready(self) -> None:
        """Return once every consumer can receive (broadcast subscriptions: the slow-joiner problem)."""
        for edge in self.edges:
            edge.wait_ready()

    def emit_many(self, items: list[Any]) -> None:
        """Hand ``items`` to every edge of the node's items (full batches are sent at once)."""
        if self._loop_fanout:
            self._counters.loop_sent += len(items) * self._loop_fanout
        for edge in self._items:
            edge.add_many(items)

    def emit_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Hand ``letters`` to every edge of the node's error stream."""
        if self._loop_letter_fanout:
            self._counters.loop_sent += len(letters) * self._loop_letter_fanout
        for edge in self._errors:
            edge.add_many(letters)

    @property
    def spill_backlog(self) -> int:
        """Messages waiting in the spills of feedback edges (their consumers had no room)."""
        return sum(edge.spill_backlog for edge in self._feedback)

    @property
    def retry_ms(self) -> int:
        """How soon an idle replica with a spill backlog tries again to send it: ``linger_ms``."""
        return max(1, round(self.linger_s * 1000))

    def flush(self) -> None:
        """Send every partial batch; the next flush is due ``linger_ms`` from now."""
        for edge in self.edges:
            edge.flush()
        self.deadline = time.monotonic() + self.linger_s

    def has_pending(self) -> bool:
        """True if items wait in a batch of some edge not sent yet."""
        return any(edge.has_pending() for edge in self.edges)

    def watermark(self) -> tuple[int, ...]:
        """How many items each edge was given so far (with restarts: what an input batch waits to be acknowledged)."""
        return tuple(edge.emitted for edge in self.edges)

    def acked_prefixes(self) -> tuple[int, ...]:
        """How many of the items each edge was given its consumers acknowledged, in order."""
        return tuple(edge.acked_prefix() for edge in self.edges)

    def read_back(self) -> None:
        """Take the credit and acknowledgements that arrived for every edge."""
        for edge in self.edges:
            edge.read_back()

    def rewire(self, context: zmq.Context, replica_id: str, incarnation: int, endpoints: AddressBook) -> None:
        """Replica ``replica_id`` was restarted: every edge to it sends it again what it kept for it."""
        for edge in self.edges:
            if edge.plan.downstream == replica_id.rpartition("/")[0]:
                consumer = int(replica_id.rpartition("/")[2])
                edge.rewire(context, consumer, incarnation, endpoints[replica_id][IN_SLOT])

    @property
    def replayed(self) -> int:
        """Items sent again to restarted consumer replicas, all edges together."""
        return sum(edge.replayed for edge in self.edges)

    def send_barrier(self, checkpoint: int) -> None:
        """Flush, then send the barrier of ``checkpoint`` on every socket, behind the data."""
        for edge in self.edges:
            edge.send_barrier(checkpoint)
        self.deadline = time.monotonic() + self.linger_s

    def send_eos(self) -> None:
        """Flush, then send end of stream on every socket, behind the data."""
        for edge in self.edges:
            edge.send_eos()

    def close(self) -> None:
        for edge in self.edges:
            edge.close()


def _loop_fanout(edges: tuple[OutputEdge, ...]) -> int:
    """Per item emitted on ``edges``, how many consumer replicas in a loop get it."""
    return sum(edge.plan.consumers if edge.plan.grouping.kind is GroupingKind.BROADCAST else 1
               for edge in edges if edge.plan.loop is not None)
