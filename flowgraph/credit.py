"""The consumer's side of a demand-driven shuffle: credit granted to each producer replica.

A shuffle edge to several consumer replicas does not deal items out ahead
of time (see ``plan``): a producer sends a consumer only as many items as
that consumer granted. A consumer grants, per producer, enough for about
``CREDIT_QUEUE_S`` of its own measured work per item (busy seconds over
items in, so a replica on a slower core grants less), at least one item and
at most what the edge's ZeroMQ queues would hold anyway. It tops the grant
up when half of it has arrived. Before it measured anything a consumer
counts on ``CREDIT_START_ITEMS``, which its producers assume too.

Credit is counted when a batch is received, not when it was processed:
what a consumer owes its producers is what waits in the queues for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq

from . import wire
from .counters import Counters
from .plan import CREDIT_QUEUE_S, CREDIT_START_ITEMS, Plan, ReplicaPlan, credit_slot, replica_id

if TYPE_CHECKING:
    from .channel import Wiring


@dataclass
class _Grant:
    """What one consumer replica granted one producer replica, and what arrived."""

    endpoint_peer: str
    most: int
    """The largest grant: what the edge's queues hold (high-water mark times items per batch)."""
    granted: int = CREDIT_START_ITEMS
    received: int = 0
    socket: zmq.Socket | None = None


class Grants:
    """Credit this replica grants the producers of its demand-driven shuffle inputs."""

    def __init__(self, plan: Plan, replica: ReplicaPlan, token: bytes, wiring: Wiring, counters: Counters) -> None:
        self._counters = counters
        self._wiring = wiring
        self._token = token
        self._node = plan.node(replica.node).index
        self._replica = replica.index
        self._slot = credit_slot(replica.node)
        self._grants: dict[tuple[int, int], _Grant] = {
            (plan.node(edge.upstream).index, producer): _Grant(
                replica_id(edge.upstream, producer), edge.buffers.effective_hwm * edge.buffers.batch_items)
            for edge in plan.edges_into(replica.node) if edge.uses_credit
            for producer in range(edge.producers)
        }
        self._owed: set[tuple[int, int]] = set()
        """Producers whose grant could not be sent (their queue was full): tried again before waiting."""

    def connect(self, context: zmq.Context, address_book: Mapping[str, Mapping[str, str]]) -> None:
        for grant in self._grants.values():
            socket = context.socket(zmq.PUSH)
            socket.linger = 0
            self._wiring.secure(socket, serve=False)
            socket.connect(address_book[grant.endpoint_peer][self._slot])
            grant.socket = socket

    def received(self, producer: tuple[int, int], items: int) -> None:
        """``items`` arrived from ``producer``; grant more if half of the grant has arrived."""
        grant = self._grants.get(producer)
        if grant is not None:
            grant.received += items
            self._top_up(producer, grant)

    def retry(self) -> None:
        """Send the grants that could not be sent before (call before waiting for input)."""
        for producer in list(self._owed):
            self._top_up(producer, self._grants[producer])

    def _top_up(self, producer: tuple[int, int], grant: _Grant) -> None:
        window = self._window(grant.most)
        waiting = grant.granted - grant.received
        if waiting > window // 2:
            return
        more = window - waiting
        header = wire.encode_header(self._token, wire.Kind.CREDIT, 0, self._node, self._replica, 0, more)
        assert grant.socket is not None, "connect() comes first"
        try:
            grant.socket.send(header, zmq.NOBLOCK)
        except zmq.Again:
            self._owed.add(producer)
            return
        self._owed.discard(producer)
        grant.granted += more

    def _window(self, most: int) -> int:
        """Items this replica works through in ``CREDIT_QUEUE_S``, from 1 to ``most``."""
        busy, items = self._counters.busy_s, self._counters.items_in
        if busy <= 0 or items <= 0:
            return min(CREDIT_START_ITEMS, most)
        return max(1, min(most, int(items / busy * CREDIT_QUEUE_S)))

    def close(self) -> None:
        for grant in self._grants.values():
            if grant.socket is not None:
                grant.socket.close(linger=0)
