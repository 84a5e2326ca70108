"""Counters of one replica: written by the replica's thread, read by its agent for heartbeats.

Plain attributes, no locks: a reader in another thread sees values at most
one update old, which is all progress and metrics need. ``snapshot()`` is
the frozen ``ReplicaStats`` that travels to the launcher.
"""

from __future__ import annotations

from ..wire.control import EdgeStats, ReplicaStats


class EdgeCounters:
    """Counters of one output edge of a replica (see ``EdgeStats`` for each field)."""

    __slots__ = ("items", "batches", "bytes", "blocked_s")

    def __init__(self) -> None:
        self.items = 0
        self.batches = 0
        self.bytes = 0
        self.blocked_s = 0.0

    def snapshot(self) -> EdgeStats:
        return EdgeStats(self.items, self.batches, self.bytes, self.blocked_s)


class Counters:
    """What one replica has done so far."""

    __slots__ = ("items_in", "items_out", "busy_s", "blocked_s", "started_at", "ended_at", "errors", "retries",
                 "skipped", "dead_lettered", "acked", "replayed", "incarnation", "edges", "in_flight", "peak_in_flight",
                 "spilled", "loop_sent", "loop_done")

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
        self.ended_at = 0.0
        """Wall-clock time (``time.time()``) it ended, cleanly or not; 0 while it runs."""
        self.errors = 0
        """Exceptions its code raised on items (each attempt counts)."""
        self.retries = 0
        """Attempts after the first."""
        self.skipped = 0
        """Items given up and dropped (``on_error="skip"``)."""
        self.dead_lettered = 0
        """Items given up and sent to its error stream (``on_error="dead_letter"``)."""
        self.acked = 0
        """A source's items acknowledged all the way down, in order (with restarts)."""
        self.replayed = 0
        """Items sent again to restarted consumer replicas."""
        self.incarnation = 0
        """Which start of the replica this is: how often it was restarted before."""
        self.edges: dict[str, EdgeCounters] = {}
        """Per output edge, by edge name (``upstream->downstream``)."""
        self.in_flight = 0
        """Items taken from the inputs and not completed yet."""
        self.peak_in_flight = 0
        """The most items it had in flight at once (with ``concurrency=``; else 0)."""
        self.spilled = 0
        """Messages its feedback edges wrote to disk (their consumers had no room)."""
        self.loop_sent = 0
        """Items emitted on the edges of its loop, one per consumer replica reached (``wire.control.LoopCounts``)."""
        self.loop_done = 0
        """Items from the edges of its loop it completed."""

    def snapshot(self) -> ReplicaStats:
        """The counters now, as the frozen record the launcher gets."""
        return ReplicaStats(
            items_in=self.items_in,
            items_out=self.items_out,
            busy_s=self.busy_s,
            started_at=self.started_at,
            ended_at=self.ended_at,
            errors=self.errors,
            retries=self.retries,
            skipped=self.skipped,
            dead_lettered=self.dead_lettered,
            acked=self.acked,
            replayed=self.replayed,
            incarnation=self.incarnation,
            edges={name: counters.snapshot() for name, counters in self.edges.items()},
            in_flight=self.in_flight,
            peak_in_flight=self.peak_in_flight,
            spilled=self.spilled,
        )
