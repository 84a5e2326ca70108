"""Checkpoint barrier alignment for the inputs of one replica (Carbone et al., 2015).

Once the barrier of checkpoint n came from a producer, what that producer
sends next is held back, in arrival order, until every producer sent
barrier n or ended (an ended input counts as aligned, as in Flink since
FLINK-21086). Then the checkpoint is aligned: the replica stores its part
and forwards the barrier, and what was held is delivered before anything
newer, a barrier among it holding its producer back again.

The producers of a replica share its PULL socket, so holding back is done
by reading and keeping, not by leaving messages in a socket. Pure
bookkeeping over opaque messages: ``inputs`` receives, checks and decodes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

M = TypeVar("M")


class AlignmentError(Exception):
    """A barrier of another checkpoint came while one aligns (a bug, or a peer that broke the protocol)."""


class Alignment(Generic[M]):
    """Which producers are held back for which checkpoint, and what they sent meanwhile."""

    def __init__(self, producers: Iterable[Hashable]) -> None:
        self._producers = frozenset(producers)
        self._aligning: int | None = None
        """The checkpoint whose barriers are arriving (None: none is)."""
        self._blocked: set[Hashable] = set()
        """Producers whose barrier of ``_aligning`` came."""
        self.ended: set[Hashable] = set()
        """Producers whose end of stream came (in its turn)."""
        self._held: deque[tuple[Hashable, M]] = deque()
        self._released: deque[tuple[Hashable, M]] = deque()
        """What was held during the alignment that completed: to be delivered before anything newer."""
        self._aligned: int | None = None
        """A checkpoint aligned and not yet taken."""

    @property
    def idle(self) -> bool:
        """Nothing held, nothing to release, no aligned checkpoint untaken."""
        return self._aligned is None and not self._held and not self._released

    def holds(self, producer: Hashable) -> bool:
        """True if what ``producer`` sends now must be held back (``hold`` it)."""
        return producer in self._blocked

    def hold(self, producer: Hashable, message: M) -> None:
        self._held.append((producer, message))

    def barrier(self, producer: Hashable, checkpoint: int) -> None:
        """The barrier of ``checkpoint`` came from ``producer`` (in its turn: not held)."""
        if self._aligning is None:
            self._aligning = checkpoint
        elif checkpoint != self._aligning:
            raise AlignmentError(f"the barrier of checkpoint {checkpoint} came while checkpoint {self._aligning} "
                                 "aligns")
        self._blocked.add(producer)
        self._check()

    def end(self, producer: Hashable) -> None:
        """``producer`` sent end of stream (in its turn): from now on it counts as aligned."""
        self.ended.add(producer)
        self._check()

    def take_aligned(self) -> int | None:
        """The checkpoint that just aligned, once (None if none did)."""
        aligned, self._aligned = self._aligned, None
        return aligned

    def next_released(self) -> M | None:
        """The next held message to deliver now that its alignment completed (None: none, or an aligned
        checkpoint must be taken first); one whose producer is held back again is held again."""
        while self._aligned is None and self._released:
            producer, message = self._released.popleft()
            if producer in self._blocked:
                self._held.append((producer, message))
                continue
            return message
        return None

    def _check(self) -> None:
        if self._aligning is None or not self._producers <= self._blocked | self.ended:
            return
        self._aligned, self._aligning = self._aligning, None
        self._blocked.clear()
        self._released.extend(self._held)
        self._held.clear()
