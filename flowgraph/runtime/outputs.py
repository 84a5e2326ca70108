"""The sending end of a replica: its output edges, driven together.

``Outputs`` hands every emitted item to every output edge (each edge
batches, waits for room, sends end of stream behind its data: see
``edges``) and keeps the one deadline by which partial batches are due.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from ..model.dsl import GroupingKind
from .demand import DemandEdge
from .edges import AddressBook, BroadcastEdge, EdgeSetup, KeyedEdge, OutputEdge, PushEdge

_EDGES: dict[GroupingKind, Callable[[EdgeSetup], OutputEdge]] = {
    GroupingKind.SHUFFLE: PushEdge, GroupingKind.BY_KEY: KeyedEdge, GroupingKind.BROADCAST: BroadcastEdge,
}


def make_edge(setup: EdgeSetup) -> OutputEdge:
    """The output edge the plan asks for: a demand-driven shuffle to several consumers, else by grouping."""
    if setup.plan.uses_credit:
        return DemandEdge(setup)
    return _EDGES[setup.plan.grouping.kind](setup)


class Outputs:
    """The sending side of a replica: one ``OutputEdge`` per output edge."""

    def __init__(self, setups: Iterable[EdgeSetup]) -> None:
        self.edges = tuple(make_edge(setup) for setup in setups)
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

    def connect(self, context: zmq.Context, address_book: AddressBook) -> None:
        for edge in self.edges:
            edge.connect(context, address_book)

    def wait_ready(self) -> None:
        """Return once every consumer can receive (broadcast subscriptions: the slow-joiner problem)."""
        for edge in self.edges:
            edge.wait_ready()

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
