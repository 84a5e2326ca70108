"""Settings of a run: how items are batched, buffered and serialized on an edge, and how long it waits.

``BufferSettings`` come in layers, the later winning: the defaults below,
the topology's (``Topology(name, batch_items=...)``), the run's
(``run(buffers=...)``, ``--hwm``) and the edge's own
(``inputs={fetch: shuffle(batch_items=1)}``).

``Timeouts`` are one record per run (``run(timeouts=...)``), carried to
every worker: the heartbeat, how long silence means a peer is lost, and
how long each step of a run may take.
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

    @property
    def kept_batches(self) -> int:
        """With restarts, a producer keeps at most this many unacknowledged batches for one consumer replica.

        Four times the high-water mark, and eight more: room for what the
        queues of the pair hold, and for what waits to be acknowledged
        downstream, so keeping slows nothing when nothing fails. Beyond it the
        producer waits (backpressure): memory stays bounded.
        """
        return 4 * self.effective_hwm + 8

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


@dataclass(frozen=True)
class Timeouts:
    """How long a run waits for what, in seconds; one record per run, the same in every worker.

    The defaults suit real runs; tests pass smaller ones
    (``run(topo, timeouts=Timeouts(local_silence_s=2))``).

    >>> Timeouts().remote_silence_s
    3.0
    >>> Timeouts(heartbeat_s=0)
    Traceback (most recent call last):
    ValueError: heartbeat_s must be a number > 0, not 0
    """

    heartbeat_s: float = 0.5
    """Launcher and workers send each other a heartbeat this often."""
    local_silence_s: float = 10.0
    """A local worker and the launcher give each other up after this long without a heartbeat."""
    remote_silence_s: float = 3.0
    """The same over hosts, where a lost host must be noticed sooner (a frozen local worker is rare)."""
    register_s: float = 60.0
    """Every replica registers its sockets within this long of its start."""
    subscribe_s: float = 30.0
    """Broadcast consumers subscribe within this long of the address book."""
    stop_check_s: float = 0.1
    """A replica waiting (for input, for room, for subscribers) looks for a stop request this often."""
    idle_wait_s: float = 1.0
    """A replica with nothing to do waits this long at a time in its receive."""
    last_words_s: float = 0.5
    """A replica that ended without being done may take this long to deliver its error message."""
    stop_grace_s: float = 2.0
    """After a stop request, replicas get this long to end before they are killed."""
    shutdown_s: float = 10.0
    """After the run is done, workers get this long to exit before they are killed."""
    probe_s: float = 20.0
    """A host answers the ssh probe within this long."""

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{spec.name} must be a number > 0, not {value!r}")

    @property
    def stop_check_ms(self) -> int:
        """``stop_check_s`` in whole milliseconds (ZeroMQ's timeouts), at least 1."""
        return max(1, round(self.stop_check_s * 1000))
