"""The items one replica has in flight (``concurrency=N``), and the order their results leave in.

Each admitted item gets a ticket, counting up. Results complete in any
order; ``release()`` hands them on in ticket order (``ordered=True``: a
result waits for every earlier one, as Flink's ordered async wait does) or
as they complete (``ordered=False``). The window is full at ``capacity``
items admitted and not released: an ordered window counts a completed
result that waits for an earlier one, so memory stays bounded by
``capacity`` items and their outputs.

Pure: no threads, no clock; ``tests/test_window.py`` steps it.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar

Outcome = TypeVar("Outcome")


class Window(Generic[Outcome]):
    """Tickets in flight, and the completed ones waiting to be released."""

    def __init__(self, capacity: int, ordered: bool = True) -> None:
        if capacity < 1:
            raise ValueError(f"a window holds at least one item, not {capacity}")
        self.capacity = capacity
        self.ordered = ordered
        self._next = 0
        """The next ticket to give."""
        self._oldest = 0
        """Ordered: the ticket released next."""
        self._admitted: dict[int, Hashable] = {}
        """Tickets not released, and what each was admitted with (its batch)."""
        self._completed: dict[int, Outcome] = {}

    def __len__(self) -> int:
        """Items admitted and not released yet."""
        return len(self._admitted)

    @property
    def full(self) -> bool:
        return len(self._admitted) >= self.capacity

    @property
    def running(self) -> int:
        """Items admitted and not completed yet."""
        return len(self._admitted) - len(self._completed)

    def admit(self, tag: Hashable = None) -> int:
        """A ticket for a new item (``tag``: what ``release`` gives back with it); call only when not full."""
        assert not self.full, "a full window admits nothing"
        ticket = self._next
        self._next += 1
        self._admitted[ticket] = tag
        return ticket

    def complete(self, ticket: int, outcome: Outcome) -> None:
        """Ticket ``ticket``'s item completed with ``outcome``."""
        if ticket not in self._admitted or ticket in self._completed:
            raise KeyError(f"ticket {ticket} is not in flight")
        self._completed[ticket] = outcome

    def release(self) -> list[tuple[int, Any, Outcome]]:
        """``(ticket, tag, outcome)`` of every result that may leave now, in the order they leave."""
        released: list[tuple[int, Any, Outcome]] = []
        if self.ordered:
            while self._oldest in self._completed:
                ticket = self._oldest
                released.append((ticket, self._admitted.pop(ticket), self._completed.pop(ticket)))
                self._oldest += 1
            return released
        for ticket in sorted(self._completed):
            released.append((ticket, self._admitted.pop(ticket), self._completed.pop(ticket)))
        self._completed.clear()
        return released
