"""What a node does when its code raises on an item, and what a dead-lettered item carries.

``ErrorPolicy`` is the frozen form of the keywords ``on_error=``, ``retries=``,
``retry_on=``, ``retry_backoff_s=``, ``max_errors=`` and ``restarts=`` of
``topo.node`` and ``topo.sink`` (``restarts=`` of ``topo.source`` too). The
default is today's fail-fast: the first exception fails the run.

Per item, never per batch: every input item ends exactly once as
processed, skipped or dead-lettered, and the outputs of an item whose
processing raised are never sent (a generator's outputs for an item are held
until the item is done), so a retried item's outputs appear once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ..errors import TopologyError

ON_ERROR = ("fail", "skip", "dead_letter")
BACKOFF_CAP_S = 30.0
"""A retry waits at most this long."""


@dataclass(frozen=True)
class ErrorPolicy:
    """How one node treats an exception in its code, and how often its replicas may be restarted."""

    on_error: str = "fail"
    """``fail`` (the run fails), ``skip`` (count it, drop the item) or ``dead_letter`` (to ``handle.errors``)."""
    retries: int = 0
    """Attempts after the first, for exceptions of ``retry_on``, before ``on_error`` applies."""
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    retry_backoff_s: float = 0.1
    """The first retry waits about this long; each next one twice as long, up to ``BACKOFF_CAP_S``, with jitter."""
    max_errors: int | None = None
    """The run fails once more than this many items were skipped or dead-lettered (None: no limit)."""
    restarts: int | None = None
    """How many times each replica may be restarted (None: the run's ``--restarts``)."""

    @property
    def catches(self) -> bool:
        """True unless the first exception fails the replica (the fast path: no per-item guard needed)."""
        return self.on_error != "fail" or self.retries > 0

    @classmethod
    def declared(cls, what: str, on_error: str = "fail", retries: int = 0,
                 retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
                 retry_backoff_s: float = 0.1, max_errors: int | None = None,
                 restarts: int | None = None) -> ErrorPolicy:
        """The policy of the keywords given to ``topo.node``; raises ``TopologyError`` naming ``what``."""
        if on_error not in ON_ERROR:
            raise TopologyError(f"{what}: on_error={on_error!r}; expected one of {', '.join(map(repr, ON_ERROR))}")
        for name, value in (("retries", retries), ("max_errors", max_errors), ("restarts", restarts)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise TopologyError(f"{what}: {name}={value!r}; it must be an integer >= 0")
        if retries is None:
            raise TopologyError(f"{what}: retries=None; it must be an integer >= 0")
        classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        if not classes or not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
            raise TopologyError(f"{what}: retry_on={retry_on!r}; expected an exception class or a tuple of them")
        if isinstance(retry_backoff_s, bool) or not isinstance(retry_backoff_s, (int, float)) or retry_backoff_s < 0:
            raise TopologyError(f"{what}: retry_backoff_s={retry_backoff_s!r}; it must be a number >= 0")
        return cls(on_error, retries, classes, float(retry_backoff_s), max_errors, restarts)

    def describe(self) -> str:
        """The per-item policy as ``flowgraph check`` shows it (the restarts it shows apart); empty for the default."""
        parts = []
        if self.on_error != "fail":
            parts.append(f"on_error={self.on_error}")
        if self.retries:
            on = ",".join(c.__name__ for c in self.retry_on)
            parts.append(f"retries={self.retries} (on {on}, backoff {self.retry_backoff_s:g} s)")
        if self.max_errors is not None:
            parts.append(f"max_errors={self.max_errors}")
        return " ".join(parts)


def backoff_s(attempt: int, base_s: float, rng: random.Random) -> float:
    """How long to wait before retry number ``attempt`` (1 for the first): doubling from ``base_s``, capped, jittered.

    The wait is drawn from the upper half of the doubled delay ("equal
    jitter"), so replicas that failed together do not retry together.

    >>> [round(backoff_s(n, 0.1, random.Random(1)), 3) for n in (1, 2, 3, 20)]
    [0.057, 0.113, 0.227, 17.015]
    """
    delay = min(BACKOFF_CAP_S, base_s * 2.0 ** (attempt - 1))
    return delay / 2 + rng.random() * delay / 2


@dataclass(frozen=True)
class DeadLetter:
    """An item a node could not process, as its error stream (``handle.errors``) carries it.

    ``node``, ``replica`` and ``host`` say where it failed; ``error_type``
    and ``error`` what was raised (the class name and the message);
    ``traceback`` the user's frames; ``attempts`` how often it was tried (or,
    for an item that killed its replica every time, how often it did).
    """

    item: Any
    node: str
    replica: int
    host: str
    error_type: str
    error: str
    traceback: str
    attempts: int
