"""``RunReport``: what a finished run did, per node and per replica."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ReplicaReport:
    """Counters of one replica."""

    node: str
    replica: int
    host: str
    items_in: int
    """Items it received (0 for a source)."""
    items_out: int
    """Items it emitted (0 for a sink)."""
    wall_s: float
    """Seconds from the start barrier to its end of stream (0 if it did not end)."""
    busy_s: float
    """Seconds in user code (process, generate, finish)."""
    blocked_s: float
    """Seconds it waited for a consumer to have room (backpressure)."""
    bytes_out: int
    """Bytes it sent on all output edges."""
    batches_out: int = 0
    """Batches (ZeroMQ messages) it sent on all output edges."""
    started_at: float = 0.0
    """Wall-clock time (epoch seconds) it passed the start barrier; 0 if it did not."""
    ended_at: float = 0.0
    """Wall-clock time (epoch seconds) it finished; 0 if it did not."""
    error: str | None = None
    """Why it failed, for the replica that failed the run."""


@dataclass(frozen=True)
class NodeReport:
    """Counters of one node: its replicas and their sums."""

    name: str
    kind: str
    replicas: tuple[ReplicaReport, ...]

    @property
    def parallelism(self) -> int:
        return len(self.replicas)

    @property
    def items_in(self) -> int:
        return sum(r.items_in for r in self.replicas)

    @property
    def items_out(self) -> int:
        return sum(r.items_out for r in self.replicas)

    @property
    def wall_s(self) -> float:
        """The longest replica's wall time."""
        return max(r.wall_s for r in self.replicas)


_OUTCOMES = {"ok": "done in", "failed": "failed after", "interrupted": "interrupted after"}


@dataclass(frozen=True)
class RunReport:
    """What a run did; ``report["fetch"]`` is a node's ``NodeReport``.

    ``run`` returns the report of a run that ended well; a failed or
    interrupted one carries its report (``RunFailed.report``), with each
    replica's counters as far as they are known.
    """

    topology: str
    mode: str
    """``inproc``, ``local`` or ``hosts``."""
    nodes: Mapping[str, NodeReport]
    startup_s: float
    """Seconds from the launch to the start barrier (every replica connected and set up)."""
    wall_s: float
    """Seconds from the launch until every replica finished."""
    collected: Mapping[str, tuple[tuple[Any, ...], ...]] = field(default_factory=dict)
    """For nodes named in ``run(collect=...)``: the items each replica received, in arrival order."""
    status: str = "ok"
    """How the run ended: ``ok``, ``failed`` or ``interrupted``."""

    def __getitem__(self, node: str) -> NodeReport:
        return self.nodes[node]

    def __iter__(self) -> Iterator[NodeReport]:
        return iter(self.nodes.values())

    def summary(self) -> str:
        """A plain-text table: one row per node, then one per replica when there are several."""
        header = (f"{'node':<24} {'kind':<6} {'replicas':>8} {'in':>10} {'out':>10} {'time s':>8} "
                  f"{'busy s':>8} {'blocked s':>9}")
        lines = [
            f"topology {self.topology!r} ({self.mode}): {_OUTCOMES[self.status]} {self.wall_s:.2f} s "
            f"(startup {self.startup_s:.2f} s)",
            header,
            "-" * len(header),
        ]
        for node in self.nodes.values():
            lines.append(
                f"{node.name:<24} {node.kind:<6} {node.parallelism:>8} {node.items_in:>10} {node.items_out:>10} "
                f"{node.wall_s:>8.2f} {sum(r.busy_s for r in node.replicas):>8.2f} "
                f"{sum(r.blocked_s for r in node.replicas):>9.2f}"
            )
            if node.parallelism > 1:
                for r in node.replicas:
                    label = f"  /{r.replica}@{r.host}"
                    lines.append(
                        f"{label:<24} {'':<6} {'':>8} {r.items_in:>10} {r.items_out:>10} "
                        f"{r.wall_s:>8.2f} {r.busy_s:>8.2f} {r.blocked_s:>9.2f}"
                    )
        return "\n".join(lines)
