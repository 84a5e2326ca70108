"""What ends a replica early: a stop request, or a failure in one of its phases.

Inside the replica these are exceptions; ``replica`` turns a ``Failure``
into the ``Failed`` message the launcher reports as ``RunFailed``.
"""

from __future__ import annotations

from typing import Any

from ..errors import Phase

ITEM_REPR_CHARS = 200


class Stopped(Exception):
    """The launcher asked this replica to stop (or was lost): leave without finishing."""


class ProtocolError(Exception):
    """A checked message of this run broke the protocol (lost or repeated batches)."""


class SerializationError(Exception):
    """An emitted item cannot be encoded by its edge's serializer."""


class PoisonItem(Exception):
    """An item killed its replica every time it was processed (it was in flight at each of its last deaths)."""


class LateFeedback(Exception):
    """Items came back on a feedback edge after its consumer, a loop's head, finished (emitted by ``finish()``
    of a node in the loop)."""


class Failure(Exception):
    """Phase ``phase`` of the replica failed with ``error``, maybe while processing ``item``.

    ``reason`` says why an error the policy would take fails the replica after all (``max_errors``).
    """

    def __init__(self, phase: Phase, error: BaseException, item: Any = None, has_item: bool = False,
                 reason: str | None = None, fatal: bool = False) -> None:
        super().__init__(phase)
        self.phase = phase
        self.error = error
        self.item_repr = short_repr(item) if has_item else None
        self.reason = reason
        self.fatal = fatal
        """A restart would not help (a poison item): the run fails, whatever the restart budget."""

    @property
    def message(self) -> str:
        """``ExceptionType: message``, after the reason if there is one."""
        text = f"{type(self.error).__name__}: {self.error}"
        return text if self.reason is None else f"{self.reason}: {text}"


def short_repr(item: Any) -> str:
    """``repr(item)``, cut to ``ITEM_REPR_CHARS``; a broken ``__repr__`` must not hide the real error."""
    try:
        text = repr(item)
    except Exception as error:  # user code: anything
        text = f"<{type(item).__name__} with failing repr: {error!r}>"
    return text if len(text) <= ITEM_REPR_CHARS else text[: ITEM_REPR_CHARS - 3] + "..."
