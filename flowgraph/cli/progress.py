"""Live progress of a run: per node replicas alive, items, rate, busy time and backpressure.

Replicas send their counters with every heartbeat (twice a second). From two
samples of them this module computes, per node:

- ``rate``: items per second received (for a source: emitted);
- ``busy``: the share of time its replicas spent in user code;
- ``input_full``: the share of time its upstream replicas waited to send to
  it, i.e. how often its input buffers were full;
- ``output_full``: the share of time it waited to send downstream;
- ``in_flight``: items its replicas have taken and not completed (with
  ``concurrency=``, up to that many per replica), and ``spilled``: the
  messages its feedback edges wrote to disk (a loop).

A node whose input is full while its output is not is the **bottleneck**:
everything upstream waits for it and nothing downstream holds it back. The
view marks the worst such node. ``node_rows`` is pure; ``LiveTable`` (rich,
for a terminal) and ``ProgressLines`` (plain lines, for logs and CI) show it.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from ..model.plan import Plan
from ..wire.control import ReplicaStats

Stats = Mapping[str, ReplicaStats]
"""Counters by replica id, as replicas report them."""

BOTTLENECK_INPUT_FULL = 0.5
BOTTLENECK_OUTPUT_FULL = 0.2


@dataclass(frozen=True)
class NodeRow:
    """What the progress view shows for one node."""

    name: str
    kind: str
    alive: int
    replicas: int
    items_in: int
    items_out: int
    rate: float
    busy: float
    input_full: float | None
    """None for a source (it has no input)."""
    output_full: float | None
    """None for a sink (it has no output)."""
    bottleneck: bool = False
    errors: int = 0
    retries: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    restarts: int = 0
    in_flight: int = 0
    spilled: int = 0

    @property
    def gave_trouble(self) -> bool:
        """True if its error policy or supervision had anything to do (the view then shows what they did)."""
        return bool(self.errors or self.retries or self.skipped or self.dead_lettered or self.restarts)


def node_rows(plan: Plan, earlier: Stats, later: Stats, seconds: float, alive: set[str]) -> list[NodeRow]:
    """One row per node, from counters sampled ``seconds`` apart (``earlier`` may be empty)."""
    seconds = max(seconds, 1e-9)

    def delta(replica: str, key: str, edge: str | None = None) -> float:
        now = later.get(replica)
        if now is None:
            return 0.0
        then = earlier.get(replica)
        return _value(now, key, edge) - (_value(then, key, edge) if then is not None else 0.0)

    rows = []
    for node in plan.nodes:
        ids = [r.id for r in plan.replicas if r.node == node.name]
        inputs = plan.edges_into(node.name)
        outputs = plan.edges_from(node.name)
        counted = "items_out" if not inputs else "items_in"

        def total(key: str, ids: list[str] = ids) -> int:
            return sum(getattr(later[replica], key) for replica in ids if replica in later)

        input_full = None
        if inputs:
            input_full = max(
                sum(delta(r.id, "blocked_s", edge.name) for r in plan.replicas if r.node == edge.upstream)
                / (seconds * edge.producers)
                for edge in inputs
            )
        output_full = None
        if outputs:
            # a replica waits on one edge at a time
            output_full = sum(delta(replica, "blocked_s") for replica in ids) / (seconds * len(ids))
        rows.append(NodeRow(
            name=node.name,
            kind=node.kind.value,
            alive=sum(1 for replica in ids if replica in alive),
            replicas=len(ids),
            items_in=total("items_in"),
            items_out=total("items_out"),
            errors=total("errors"),
            retries=total("retries"),
            skipped=total("skipped"),
            dead_lettered=total("dead_lettered"),
            restarts=total("incarnation"),
            in_flight=total("in_flight"),
            spilled=total("spilled"),
            rate=sum(delta(replica, counted) for replica in ids) / seconds,
            busy=min(1.0, sum(delta(replica, "busy_s") for replica in ids) / (seconds * len(ids))),
            input_full=None if input_full is None else min(1.0, input_full),
            output_full=None if output_full is None else min(1.0, output_full),
        ))
    return _mark_bottleneck(rows)


def _value(stats: ReplicaStats, key: str, edge: str | None) -> float:
    """A counter of one replica; ``blocked_s`` sums its output edges (or takes ``edge``'s)."""
    if key != "blocked_s":
        return float(getattr(stats, key))
    return sum(e.blocked_s for name, e in stats.edges.items() if edge is None or name == edge)


def _mark_bottleneck(rows: list[NodeRow]) -> list[NodeRow]:
    candidates = [
        row for row in rows
        if row.input_full is not None and row.input_full >= BOTTLENECK_INPUT_FULL
        and (row.output_full or 0.0) < BOTTLENECK_OUTPUT_FULL
    ]
    if not candidates:
        return rows
    worst = max(candidates, key=lambda row: (row.input_full, row.busy))
    return [NodeRow(**{**vars(row), "bottleneck": True}) if row is worst else row for row in rows]


class Sampler:
    """Keeps recent samples of the replicas' counters and compares over about ``window_s``."""

    def __init__(self, plan: Plan, window_s: float = 1.0) -> None:
        self._plan = plan
        self._window_s = window_s
        self._samples: deque[tuple[float, dict[str, ReplicaStats]]] = deque()

    def rows(self, live: Stats, alive: set[str]) -> list[NodeRow]:
        now = time.monotonic()
        self._samples.append((now, dict(live)))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window_s:
            self._samples.popleft()
        then, earlier = self._samples[0]
        return node_rows(self._plan, earlier if then < now else {}, live, now - then, alive)


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


class ProgressLines:
    """Plain progress: every ``interval_s``, one line per node (for logs, CI, non-terminals)."""

    def __init__(self, plan: Plan, interval_s: float, stream: IO[str] | None = None) -> None:
        self._sampler = Sampler(plan)
        self._interval_s = interval_s
        self._stream = stream or sys.stderr
        self._next = time.monotonic() + interval_s

    def update(self, live: Stats, alive: set[str]) -> None:
        rows = self._sampler.rows(live, alive)
        if time.monotonic() < self._next:
            return
        self._next += self._interval_s
        lines = [
            f"progress: {row.name} {row.alive}/{row.replicas} alive in={row.items_in} out={row.items_out} "
            f"rate={row.rate:.0f}/s busy={_percent(row.busy)} input_full={_percent(row.input_full)} "
            f"output_full={_percent(row.output_full)} in_flight={row.in_flight}"
            + (f" spilled={row.spilled}" if row.spilled else "")
            + (" BOTTLENECK" if row.bottleneck else "")
            + (f" errors={row.errors} retries={row.retries} skipped={row.skipped} dead_lettered={row.dead_lettered}"
               f" restarts={row.restarts}" if row.gave_trouble else "")
            for row in rows
        ]
        self._stream.write("\n".join(lines) + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Nothing to take down."""


class LiveTable:
    """A table on the terminal (rich), redrawn four times a second; worker output scrolls above it."""

    def __init__(self, plan: Plan, title: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self._sampler = Sampler(plan)
        self._title = title
        self._rows: list[NodeRow] = []
        self._live = Live(console=Console(stderr=True), get_renderable=self._render, refresh_per_second=4,
                          redirect_stdout=True, redirect_stderr=True, transient=True)
        self._live.start()

    def update(self, live: Stats, alive: set[str]) -> None:
        self._rows = self._sampler.rows(live, alive)

    def close(self) -> None:
        self._live.stop()

    def _render(self) -> Any:
        from rich.table import Table

        table = Table(title=self._title, title_justify="left", expand=False)
        trouble = any(row.gave_trouble for row in self._rows)
        columns = ["node", "replicas", "in", "out", "in flight", "rate/s", "busy", "input full", "output full"]
        spills = any(row.spilled for row in self._rows)
        columns += ["spilled"] if spills else []
        for column in [*columns, *(_TROUBLE if trouble else ()), ""]:
            table.add_column(column, justify="left" if column in ("node", "") else "right")
        for row in self._rows:
            cells = [row.name, f"{row.alive}/{row.replicas}", str(row.items_in), str(row.items_out),
                     str(row.in_flight), f"{row.rate:,.0f}", _percent(row.busy), _percent(row.input_full),
                     _percent(row.output_full)]
            cells += [str(row.spilled)] if spills else []
            if trouble:
                cells += [str(row.errors), str(row.retries), str(row.skipped), str(row.dead_lettered),
                          str(row.restarts)]
            table.add_row(*cells, "[bold red]◀ bottleneck[/]" if row.bottleneck else "")
        return table


_TROUBLE = ("errors", "retries", "skipped", "dead", "restarts")
