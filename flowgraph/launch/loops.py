"""When a loop has drained: termination detection by Mattern's four counters, the launcher as the initiator.

Every replica of a loop counts the items it emitted on the loop's edges
(``sent``, one per consumer replica reached, counted when emitted, before
anything is sent) and the items from the loop's edges it completed
(``done``, counted once the item's outputs were emitted), and says whether
it is ``quiet``: its inputs from outside the loop ended and it holds no
item in flight. The launcher asks every replica of the loop for these in
waves (``Probe``); the answers of one wave are taken at different times.

The loop has drained, for good, once a wave in which every replica was
quiet is followed by a wave whose total ``sent`` equals the first wave's
total ``done``. Why: counters only grow, and an item is counted sent
before it can be done, so at any moment done ≤ sent. Let t be the moment
the first wave ended: done1 ≤ done(t) ≤ sent(t) ≤ sent2 = done1, so at t
everything sent was done, and no replica completed anything between its
answer and t. A replica quiet at its answer could only have become busy
again by taking an item of the loop, which would be sent and not done at
t. So at t no item was in flight and no replica busy: nothing can ever
come again, and the heads are told to finish (``Drained``). Counting
messages in two waves, rather than asking for a snapshot, needs no
freezing of the loop and no acknowledgement of items; a wave costs two
control messages per replica. This is the four-counter method of
F. Mattern, "Algorithms for distributed termination detection",
Distributed Computing 2 (1987).

``LoopWatch`` is pure: the coordinator feeds it the answers and the time.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..wire.control import LoopCounts, Probe

BUSY_PROBE_S = 0.1
"""Between waves while some replica of the loop is busy."""
QUIET_PROBE_S = 0.01
"""Between waves once every replica was quiet: the confirming wave comes soon."""


@dataclass(frozen=True)
class _Wave:
    """The totals of a completed wave."""

    sent: int
    done: int
    quiet: bool


class LoopWatch:
    """The termination detection of one loop."""

    def __init__(self, loop: int, replicas: frozenset[str]) -> None:
        self.loop = loop
        self.replicas = replicas
        self.wave = 0
        """The number of the wave asked for last (0: none yet)."""
        self.drained = False
        self._answers: dict[str, LoopCounts] = {}
        self._previous: _Wave | None = None
        self._outstanding = False
        self._next_at = 0.0

    def probe(self, now: float) -> Probe | None:
        """A new wave to send to every replica of the loop, if one is due at ``now`` (monotonic seconds)."""
        if self.drained or self._outstanding or now < self._next_at:
            return None
        self.wave += 1
        self._answers = {}
        self._outstanding = True
        pause = QUIET_PROBE_S if self._previous is not None and self._previous.quiet else BUSY_PROBE_S
        self._next_at = now + pause
        return Probe(self.loop, self.wave)

    def answer(self, replica: str, counts: LoopCounts) -> bool:
        """Take one replica's answer; True when it completed a wave that shows the loop drained."""
        if counts.wave != self.wave or not self._outstanding or replica not in self.replicas:
            return False  # an answer to an earlier wave, or from a stranger to the loop
        self._answers[replica] = counts
        if len(self._answers) < len(self.replicas):
            return False
        answers = self._answers.values()
        wave = _Wave(sum(a.sent for a in answers), sum(a.done for a in answers), all(a.quiet for a in answers))
        self._outstanding = False
        previous, self._previous = self._previous, wave
        self.drained = previous is not None and previous.quiet and previous.done == wave.sent
        return self.drained
