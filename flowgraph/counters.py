"""Counters of one replica: written by the replica's thread, read by its agent for heartbeats.

Plain attributes, no locks: a reader in another thread sees values at most
one update old, which is all progress and metrics need.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EdgeStats:
    """Counters of one output edge of a replica."""

    items: int = 0
    batches: int = 0
    bytes: int = 0
    blocked_s: float = 0.0
    """Time spent waiting for a consumer to have room (backpressure)."""


class Counters:
    """What one replica has done so far."""

    __slots__ = ("items_in", "items_out", "busy_s", "blocked_s", "started_at", "edges")

    def __init__(self) -> None:
        self.items_in = 0
        """Items received (a source: 0)."""
        self.items_out = 0
        """Items emitted (a sink: 0)."""
        self.busy_s = 0.0
        """Time in user code: process(), generate(), finish()."""
        self.blocked_s = 0.0
        """Time blocked on backpressure, all output edges together (each edge has its own too)."""
        self.started_at = 0.0
        """Wall-clock time (``time.time()``) of the start barrier; 0 before."""
        self.edges: dict[str, EdgeStats] = {}
        """Per output edge, by edge name (``upstream->downstream``)."""

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain data (JSON-ready)."""
        return {
            "items_in": self.items_in,
            "items_out": self.items_out,
            "busy_s": self.busy_s,
            "started_at": self.started_at,
            "edges": {name: asdict(stats) for name, stats in self.edges.items()},
        }
