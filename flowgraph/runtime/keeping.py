"""What a producer keeps for one consumer replica in a run with restarts, and what it sends it again.

Every message sent to a consumer replica stays kept until the consumer
acknowledges it (``acks``). When the consumer is restarted, what it was
sent counts one more death it was in flight at, and is sent again:

- Kept messages that were in flight at no death go out as they come.
- After a death the suspects (messages in flight then) go out one at a
  time, each only once the one before was acknowledged, and new messages
  wait behind them (they keep their order): so at the next death exactly
  one message was in flight, the one that killed it.
- A batch in flight at ``SPLIT_DEATHS`` deaths is split into its items,
  which go out one at a time as well.
- An item in flight at ``POISON_DEATHS`` deaths is poison: it goes out as
  ``Kind.POISON``, which the consumer does not process but dead-letters,
  skips, or fails the run with, as its error policy says.

Pure bookkeeping: the edge (``edges``) encodes, numbers and sends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..wire.frames import Kind

SPLIT_DEATHS = 2
POISON_DEATHS = 3
"""An item in flight at this many deaths of its consumer replica is not sent to be processed again."""


@dataclass
class Sent:
    """A message for one consumer replica, kept until it acknowledges it."""

    kind: Kind
    payload: list[Any]
    items: int
    first: int
    """The emission index of its first item: an edge is acknowledged up to the oldest kept one's."""
    seq: int = -1
    """Its sequence number on the consumer's socket, once sent (renumbered when sent again)."""
    sent: bool = False
    deaths: int = 0
    """Deaths of the consumer replica it was in flight at."""


class Keeper:
    """The messages kept for one consumer replica, oldest first."""

    def __init__(self, split: Callable[[Sent], list[Sent]]) -> None:
        """``split`` makes a batch into single-item messages (the edge knows the serializer)."""
        self._kept: deque[Sent] = deque()
        self._split = split
        self.probing = False
        """Suspects are going out one at a time; new messages wait behind them."""

    def __len__(self) -> int:
        return len(self._kept)

    def __iter__(self) -> Iterator[Sent]:
        return iter(self._kept)

    def keep(self, message: Sent) -> bool:
        """Keep ``message``; True if it may be sent now (False while suspects go out one at a time)."""
        self._kept.append(message)
        return not self.probing

    def acknowledged(self, seq: int) -> None:
        """The consumer is done with every message up to ``seq`` (end of stream stays: a restart needs it)."""
        kept = self._kept
        while kept and kept[0].sent and kept[0].seq <= seq and kept[0].kind is not Kind.EOS:
            kept.popleft()

    def first_unacknowledged(self) -> int | None:
        """The emission index of the oldest kept batch, or None."""
        return next((message.first for message in self._kept if message.kind is not Kind.EOS), None)

    def restarted(self) -> None:
        """The consumer replica was restarted: what it was sent counts a death, and none of it arrived."""
        for message in self._kept:
            if message.sent and message.kind is not Kind.EOS:
                message.deaths += 1
            message.sent = False
        self.probing = any(message.deaths for message in self._kept)

    def to_send(self) -> list[Sent]:
        """What goes out now, in order: everything unsent, or while probing, the next suspect (if none is out)."""
        kept = self._kept
        if not self.probing:
            return [message for message in kept if not message.sent]
        if kept and kept[0].sent:
            return []  # a suspect is out: wait for its acknowledgement
        if not kept or kept[0].deaths == 0:
            self.probing = False  # the suspects are through
            return [message for message in kept if not message.sent]
        front = kept[0]
        if front.deaths >= SPLIT_DEATHS and front.items > 1:
            kept.popleft()
            kept.extendleft(reversed(self._split(front)))
            front = kept[0]
        if front.deaths >= POISON_DEATHS:
            front.kind = Kind.POISON
        return [front]
