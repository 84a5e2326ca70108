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
    errors: int = 0
    """Exceptions its code raised on items (each attempt counts; see ``on_error=``)."""
    retries: int = 0
    """Attempts after the first (``retries=``)."""
    skipped: int = 0
    """Items given up and dropped (``on_error="skip"``)."""
    dead_lettered: int = 0
    """Items given up and sent to its error stream (``on_error="dead_letter"``)."""
    restarts: int = 0
    """How often it was restarted (``--restarts``)."""
    restarted_because: tuple[str, ...] = ()
    """Why, each time: ``died: killed by SIGKILL``, ``stopped answering: ...``, ``failed in process(): ...``."""
    replayed: int = 0
    """Items it sent again to restarted consumers."""
    peak_in_flight: int = 0
    """The most items it had in flight at once (``concurrency=``; 0 for a node without)."""
    spilled: int = 0
    """Messages its feedback edges wrote to disk because their consumers had no room (a loop)."""


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
    def busy_s(self) -> float:
        return sum(r.busy_s for r in self.replicas)

    @property
    def blocked_s(self) -> float:
        return sum(r.blocked_s for r in self.replicas)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.replicas)

    @property
    def retries(self) -> int:
        return sum(r.retries for r in self.replicas)

    @property
    def skipped(self) -> int:
        return sum(r.skipped for r in self.replicas)

    @property
    def dead_lettered(self) -> int:
        return sum(r.dead_lettered for r in self.replicas)

    @property
    def restarts(self) -> int:
        return sum(r.restarts for r in self.replicas)

    @property
    def replayed(self) -> int:
        return sum(r.replayed for r in self.replicas)

    @property
    def peak_in_flight(self) -> int:
        """The replicas' peaks of items in flight, added up."""
        return sum(r.peak_in_flight for r in self.replicas)

    @property
    def spilled(self) -> int:
        return sum(r.spilled for r in self.replicas)

    @property
    def wall_s(self) -> float:
        """The longest replica's wall time."""
        return max(r.wall_s for r in self.replicas)


_OUTCOMES = {"ok": "done in", "failed": "failed after", "interrupted": "interrupted after",
             "already finished": "had finished already; nothing ran:"}


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
    """How the run ended: ``ok``, ``failed`` or ``interrupted``; ``already finished`` for ``--resume`` of a run that
    had finished (nothing ran)."""
    guarantee: str = "exactly once without failures; fail fast"
    """What it delivered under: fail fast (the default), at least once with restarts, checkpoints."""
    checkpoints_s: tuple[float, ...] = ()
    """With ``--checkpoint``: how long each complete checkpoint took, from its request to its manifest."""

    def __getitem__(self, node: str) -> NodeReport:
        return self.nodes[node]

    def __iter__(self) -> Iterator[NodeReport]:
        return iter(self.nodes.values())

    def summary(self) -> str:
        """A plain-text table: one row per node, then one per replica when there are several.

        The columns of the error policies (errors, retries, skipped, dead),
        of concurrency (peak in flight) and of loops (spilled) are there
        when some replica counted any.
        """
        if self.status == "already finished":
            return (f"topology {self.topology!r}: the run in its checkpoint directory had finished already; nothing "
                    f"ran\ndelivery: {self.guarantee}")
        columns = list(_COLUMNS)
        if any(getattr(r, field) for node in self for r in node.replicas for _, field, _, _ in _POLICY_COLUMNS):
            columns += _POLICY_COLUMNS
        columns += [column for column in _OPTIONAL_COLUMNS
                    if any(getattr(r, column[1]) for node in self for r in node.replicas)]
        header = f"{'node':<24} {'kind':<6} {'replicas':>8} " + " ".join(f"{title:>{width}}"
                                                                          for title, _, width, _ in columns)
        lines = [
            f"topology {self.topology!r} ({self.mode}): {_OUTCOMES[self.status]} {self.wall_s:.2f} s "
            f"(startup {self.startup_s:.2f} s)",
            header,
            "-" * len(header),
        ]
        for node in self.nodes.values():
            lines.append(f"{node.name:<24} {node.kind:<6} {node.parallelism:>8} " + _cells(node, columns))
            if node.parallelism > 1:
                for r in node.replicas:
                    lines.append(f"{f'  /{r.replica}@{r.host}':<24} {'':<6} {'':>8} " + _cells(r, columns))
        lines.append(f"delivery: {self.guarantee}")
        restarted = [r for node in self for r in node.replicas if r.restarts]
        for r in restarted:
            lines.append(f"restarted {r.node}/{r.replica} {r.restarts} time{'s' if r.restarts > 1 else ''}: "
                         + "; ".join(r.restarted_because))
        if restarted:
            replayed = sum(node.replayed for node in self)
            lines.append(f"{sum(r.restarts for r in restarted)} restarts, {replayed} items replayed")
        if self.checkpoints_s:
            durations = sorted(self.checkpoints_s)
            lines.append(f"{len(durations)} checkpoints, each took {durations[len(durations) // 2]:.3f} s "
                         f"(median), {durations[-1]:.3f} s at most")
        return "\n".join(lines)


_COLUMNS = [("in", "items_in", 10, "d"), ("out", "items_out", 10, "d"), ("time s", "wall_s", 8, ".2f"),
            ("busy s", "busy_s", 8, ".2f"), ("blocked s", "blocked_s", 9, ".2f")]
_POLICY_COLUMNS = [("errors", "errors", 7, "d"), ("retries", "retries", 7, "d"), ("skipped", "skipped", 7, "d"),
                   ("dead", "dead_lettered", 7, "d")]
_OPTIONAL_COLUMNS = [("peak in flight", "peak_in_flight", 14, "d"), ("spilled", "spilled", 7, "d")]
"""(title, attribute of ``NodeReport`` and ``ReplicaReport``, width, format) of the summary's columns."""


def _cells(counters: NodeReport | ReplicaReport, columns: list[tuple[str, str, int, str]]) -> str:
    return " ".join(f"{getattr(counters, field):>{width}{form}}" for _, field, width, form in columns)
