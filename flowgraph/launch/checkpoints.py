"""The launcher's side of checkpoints: when one starts, which parts it waits for, when it is complete.

Every ``interval_s`` (counted from the end of the previous one: never two
at once) the launcher asks the running sources for checkpoint n; the
barriers flow down the graph and every replica sends its part
(``runtime.snapshots``), which is written to the store as it comes.
Checkpoint n is complete when every replica of the plan has a part in it:
a replica that ended before barrier n reached it (none can reach it any
more) is served by the part it sent as it ended. Then the manifest is
written (``CheckpointStore.complete``) and the replicas are told to commit.
When every replica has ended, a final checkpoint of their final parts
commits the tail (FLIP-147: a bounded run must not drop what it did since
its last checkpoint). Pure bookkeeping over the store: the coordinator
sends and receives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..checkpoint.store import CheckpointStore, Part
from ..model.dsl import NodeKind
from ..model.plan import Plan

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 10.0


@dataclass
class _Pending:
    id: int
    started_at: float
    parts: set[str] = field(default_factory=set)
    """Replicas whose part was written."""


class Checkpointer:
    """The checkpoints of one run (and of its rollbacks and resumes: ids only grow)."""

    def __init__(self, store: CheckpointStore, plan: Plan, fingerprint: Mapping[str, Any], interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.interval_s = interval_s
        self._clock = clock
        self._replicas = tuple(replica.id for replica in plan.replicas)
        self._sources = frozenset(replica.id for replica in plan.replicas if replica.kind is NodeKind.SOURCE)
        self._next_id = store.next_id()
        self._pending: _Pending | None = None
        self._final: dict[str, Part] = {}
        self._next_at = clock() + interval_s
        self.durations_s: list[float] = []
        """How long each complete checkpoint took, from its request to its manifest."""
        self.completed = 0
        """The id of the newest complete checkpoint of this run (0: none yet)."""

    def due(self) -> tuple[int, frozenset[str]] | None:
        """A checkpoint to start now and the sources to ask (those still running), or None."""
        now = self._clock()
        if self._pending is not None or now < self._next_at:
            return None
        running = self._sources - self._final.keys()
        if not running:
            return None  # no barrier can start any more: the final checkpoint serves
        pending = self._pending = _Pending(self._take_id(), now)
        for part in self._final.values():
            self._write(pending, part)
        return pending.id, running

    def stored(self, replica: str, checkpoint: int, part: Part, final: bool) -> int | None:
        """Replica ``replica`` sent its ``part`` of ``checkpoint`` (or, ``final``, as it ended); returns the id of a
        checkpoint this completes."""
        pending = self._pending
        if final:
            self._final[replica] = part
        if pending is None or (not final and checkpoint != pending.id) or replica in pending.parts:
            return None
        self._write(pending, part)
        if len(pending.parts) < len(self._replicas):
            return None
        self.store.complete(pending.id, self._replicas, self.fingerprint)
        now = self._clock()
        self.durations_s.append(now - pending.started_at)
        self.completed, self._pending = pending.id, None
        self._next_at = now + self.interval_s
        return self.completed

    def finish(self) -> int:
        """Every replica ended: write the final checkpoint of their final parts; returns its id."""
        final = _Pending(self._take_id(), self._clock())
        for part in self._final.values():
            self._write(final, part)
        self.store.complete(final.id, self._replicas, self.fingerprint, finished=True)
        self.completed, self._pending = final.id, None
        return final.id

    def roll_back(self) -> None:
        """The run goes back to the newest complete checkpoint: what was under way is dropped."""
        if self._pending is not None:
            log.warning("checkpoint %d was under way and is dropped", self._pending.id)
        self._pending = None
        self._final = {}
        self._next_at = self._clock() + self.interval_s

    def _take_id(self) -> int:
        taken, self._next_id = self._next_id, self._next_id + 1
        return taken

    def _write(self, pending: _Pending, part: Part) -> None:
        self.store.write_part(pending.id, part)
        pending.parts.add(part.replica)
