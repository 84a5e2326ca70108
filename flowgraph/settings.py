"""How items are batched, buffered and serialized on an edge: defaults, per topology, per edge.

Settings come in layers, the later winning: the defaults below, the
topology's (``Topology(name, batch_items=...)``), the run's
(``run(buffers=...)``, ``--hwm``) and the edge's own
(``inputs={fetch: shuffle(batch_items=1)}``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SERIALIZERS = ("pickle", "msgpack", "json")
"""``pickle`` (protocol 5, large buffers out of band: see ``serializers``; any picklable item), ``msgpack``
(fast and compact; dicts, lists, str, bytes, numbers, bools, None: tuples come
back as lists) and ``json`` (the same without bytes; readable)."""


@dataclass(frozen=True)
class BufferSettings:
    """How the items of an edge are batched and buffered, and how they are serialized."""

    batch_items: int = 1024
    """A batch (one ZeroMQ message) holds at most this many items."""
    batch_bytes: int = 256 * 1024
    """A batch is sent once it holds about this many bytes (a larger item travels alone)."""
    linger_ms: float = 5.0
    """Partial batches are sent at least this often while items flow."""
    hwm: int | None = None
    """ZeroMQ high-water mark of each data socket, in batches (``--hwm``); None: from the memory budget."""
    memory_budget_bytes: int = 4 * 1024 * 1024
    """What the ZeroMQ queues of one producer→consumer pair may hold (sets the high-water mark)."""
    socket_buffer_bytes: int = 256 * 1024
    """Kernel send and receive buffer of every TCP data socket (SO_SNDBUF / SO_RCVBUF)."""
    serializer: str = "pickle"
    """How batches are encoded: one of ``SERIALIZERS``."""

    def __post_init__(self) -> None:
        problems = check_settings(dataclasses.asdict(self))
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def effective_hwm(self) -> int:
        """``hwm``, or the most full batches the memory budget allows on each side of a pair."""
        if self.hwm is not None:
            return self.hwm
        return max(1, self.memory_budget_bytes // (2 * self.batch_bytes))

    def with_overrides(self, overrides: Mapping[str, Any]) -> BufferSettings:
        """These settings with ``overrides`` (names of fields) applied."""
        return dataclasses.replace(self, **overrides) if overrides else self

    def pair_bound(self) -> tuple[int, int, str]:
        """(batches, kernel bytes, description) one producer→consumer pair can hold at most.

        Batches: what a source has taken from its generator but not batched
        yet (at most one batch), the producer's pending batch, the high-water
        mark in the PUSH/XPUB queue, one being written by the sending ZeroMQ
        I/O thread, one being read by the receiving one, the high-water mark
        in the PULL/SUB queue and the one the consumer works on. Bytes: those
        batches, plus the two kernel socket buffers over TCP (Linux doubles
        the size it is given).
        """
        batches = 2 * self.effective_hwm + 5
        kernel_bytes = 2 * 2 * self.socket_buffer_bytes
        return batches, kernel_bytes, (
            f"{batches} batches of <= {self.batch_items} items and <= max({size_text(self.batch_bytes)}, "
            f"one item) + {size_text(kernel_bytes)} in kernel socket buffers"
        )


_POSITIVE_INTS = ("batch_items", "batch_bytes", "memory_budget_bytes", "socket_buffer_bytes")
FIELDS = tuple(field.name for field in dataclasses.fields(BufferSettings))


def check_settings(settings: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``settings`` (names and values of ``BufferSettings`` fields), one line each."""
    problems = []
    for name, value in settings.items():
        if name not in FIELDS:
            problems.append(f"{name!r} is not a setting (settings: {', '.join(FIELDS)})")
        elif name in _POSITIVE_INTS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            problems.append(f"{name} must be an integer >= 1, not {value!r}")
        elif name == "hwm" and value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                                      or value < 1):
            problems.append(f"hwm must be an integer >= 1 or None, not {value!r}")
        elif name == "linger_ms" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not value > 0):
            problems.append(f"linger_ms must be a number > 0, not {value!r}")
        elif name == "serializer" and value not in SERIALIZERS:
            problems.append(f"serializer must be one of {', '.join(SERIALIZERS)}, not {value!r}")
    return problems


def size_text(n: float) -> str:
    """``n`` bytes for people: ``256 KiB``."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.0f} GiB"
