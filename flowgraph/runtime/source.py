"""Driving a source: items are taken from its generator in chunks at C speed, and go out on time while it blocks.

The generator runs in the replica's thread, which may stay in it as long as
the source likes (waiting for input, say); items it yielded before must not
wait with it. So beside the replica's thread a second thread, the late
flusher, sends what is due while the replica's thread is in the generator.

The replica's thread (``drive_source``) takes each chunk with
``taken.extend(islice(items, n))``, so items land in the deque ``taken`` one
by one as the generator yields them, and tells the flusher where it is:

- ``enter(watch)`` before the generator: ``watch`` says something can come
  due meanwhile (a batch is pending, or more than one item is asked for);
- ``leave()`` after it, holding ``lock``: the outputs are its own again.

The flusher is always in one of these states (``LateFlusher.state``); every
change happens under ``lock``, which everything that touches the outputs
holds (a mutex also gives ZeroMQ sockets the memory barrier they need to be
used by two threads in turn)::

    PARKED    nothing can come due: it waits until enter(watch=True) or stop() wakes it
    WATCHING  it waits until ``slack`` after the outputs' deadline; woken then, it
              parks if the replica's thread entered without watch since, watches on
              if the replica's thread is outside the generator (it flushes by itself)
              or flushed meanwhile (the deadline moved), and else
    FLUSHING  takes what is in ``taken``, emits it and flushes every edge; then watches
    STOPPED   stop() was called, or flushing failed: the error is raised in the
              replica's thread at its next enter() or leave()

The slack starts at ``linger``, not 0: a busy source flushes by itself
within a chunk of the deadline, and a flusher that woke at the deadline
would race it for the lock. Each time the flusher wakes to find that the
replica's thread kept up (it flushed, or is outside the generator), the
slack doubles, up to ``MAX_SLACK_S``; a flush by the flusher, or parking,
sets it back to ``linger``. So a busy source pays about 20 wake-ups of
the flusher a second, not 200: measured on the small-dicts pipeline of
``bin/bench`` (2 M items, marginal, four runs of 5 to 10 rounds in turns),
the backoff gave 0.5 % to 20 % more items per second and 5 % less CPU per
item in three runs of four. A blocked source's items still go out
within ``linger + MAX_SLACK_S`` of their deadline. The clock and the wait
are injected, so the states can be stepped without threads or time
(``step``); ``tests/test_source.py`` does.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any, Protocol

from .counters import Counters
from .slices import next_chunk

MAX_SLACK_S = 0.05
"""How late after the deadline the flusher looks at most, while the replica's thread keeps flushing by itself."""


class State(enum.Enum):
    PARKED = "parked"
    WATCHING = "watching"
    FLUSHING = "flushing"
    STOPPED = "stopped"


class SourceOutputs(Protocol):
    """What a source's driver uses of ``Outputs``."""

    deadline: float
    """When partial batches are due (``linger`` after the last flush)."""
    linger_s: float
    chunk_items: int

    def emit_many(self, items: list[Any]) -> None: ...

    def has_pending(self) -> bool: ...


Clock = Callable[[], float]
Wait = Callable[[threading.Condition, "float | None"], Any]
"""Waits on the condition (its lock held) for up to a timeout, or until notified when None."""


def _wait(condition: threading.Condition, timeout_s: float | None) -> None:
    condition.wait(timeout_s)


class LateFlusher:
    """Sends a source's due items while its generator blocks; see the module docstring for its states."""

    def __init__(self, outputs: SourceOutputs, counters: Counters, flush: Callable[[], None],
                 clock: Clock = time.monotonic, wait: Wait = _wait) -> None:
        self.lock = threading.Condition(threading.Lock())
        self.taken: deque[Any] = deque()
        """Items the replica's thread took from the generator in the current chunk (the flusher takes from the left)."""
        self.state = State.PARKED
        self._outputs = outputs
        self._counters = counters
        self._flush = flush
        self._clock = clock
        self._wait = wait
        self._inside = False
        """The replica's thread is in the generator (between enter and leave)."""
        self._watch = False
        self._took = False
        """Items were taken from ``taken`` by the flusher since the replica's thread last left."""
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.slack_s = outputs.linger_s
        """How long after the deadline the flusher looks next."""
        self._kept_up = False
        """The flusher woke and found nothing to flush since it last flushed or parked."""

    def start(self) -> None:
        """Run the flusher in its own thread."""
        self._thread = threading.Thread(target=self.run, name="flowgraph-late-flush", daemon=True)
        self._thread.start()

    def enter(self, watch: bool) -> None:
        """The replica's thread goes into the generator (not holding the lock); raises the flusher's error."""
        with self.lock:
            self._raise_error()
            self._inside = True
            self._watch = watch
            if watch and self.state is State.PARKED:
                self.lock.notify()

    def leave(self) -> bool:
        """The replica's thread is back (holding the lock); True if the flusher took items meanwhile."""
        self._inside = False
        self._raise_error()
        took, self._took = self._took, False
        return took

    def stop(self) -> None:
        """Stop the flusher and wait for its thread."""
        with self.lock:
            self.state = State.STOPPED
            self.lock.notify()
        if self._thread is not None:
            self._thread.join()

    def run(self) -> None:
        """The flusher's thread: step, wait, until stopped."""
        with self.lock:
            while True:
                timeout = self.step(self._clock())
                if self.state is State.STOPPED:
                    return
                if timeout != 0.0:  # 0.0: right after a flush, step again
                    self._wait(self.lock, timeout)

    def step(self, now: float) -> float | None:
        """One decision of the flusher at time ``now`` (holding ``lock``): how long to wait next (None: until woken).

        Returns 0.0 right after a flush (step again) and once stopped.
        """
        if self.state is State.STOPPED:
            return 0.0
        linger = self._outputs.linger_s
        if not self._watch:
            self.state = State.PARKED
            self.slack_s, self._kept_up = linger, False
            return None
        self.state = State.WATCHING
        due = self._outputs.deadline + self.slack_s
        if now < due or not self._inside:  # not due yet, or it flushes by itself when it is back
            if self._kept_up:
                self.slack_s = min(2 * self.slack_s, MAX_SLACK_S)
            self._kept_up = True
            return due - now if now < due else self.slack_s
        self.slack_s, self._kept_up = linger, False
        self.state = State.FLUSHING
        taken = self.taken
        items = [taken.popleft() for _ in range(len(taken))]  # the generator may be appending
        try:
            if items:
                self._took = True
                self._outputs.emit_many(items)
                self._counters.items_out += len(items)
            self._flush()
        except BaseException as error:  # handed to the replica's thread
            self._error = error
            self.state = State.STOPPED
            return 0.0
        self.state = State.WATCHING
        return 0.0

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def drive_source(items: Iterator[Any], outputs: SourceOutputs, counters: Counters, flush: Callable[[], None],
                 flusher: LateFlusher, clock: Clock = time.monotonic,
                 between: Callable[[], None] | None = None) -> None:
    """Emit what ``items`` yields, in chunks sized by ``next_chunk``; a slow source's items go out at once.

    Partial batches go out ``linger`` after the last flush, by this thread
    between chunks, or by ``flusher`` while the generator blocks. A
    source's busy time is its wall time less the time it was blocked
    sending (backpressure). ``between`` runs after each chunk was handed on
    (holding the lock): a checkpoint's barrier goes out there, after every
    item counted so far.
    """
    started = clock()
    blocked = counters.blocked_s
    size, most = 1, outputs.chunk_items
    taken = flusher.taken
    while True:
        began, asked = clock(), size
        flusher.enter(asked > 1 or outputs.has_pending())
        taken.extend(islice(items, asked))  # the flusher may take items from the left meanwhile
        with flusher.lock:
            took = flusher.leave()
            chunk = list(taken)
            taken.clear()
            now = clock()
            if chunk:
                outputs.emit_many(chunk)
                counters.items_out += len(chunk)
            size, slow = next_chunk(size, most, now - began, len(chunk))
            if slow or now >= outputs.deadline:
                flush()
            counters.busy_s = now - started - (counters.blocked_s - blocked)
            if between is not None:
                between()
            if len(chunk) < asked and not took:  # islice ran out: the source is done
                break
    counters.busy_s = clock() - started - (counters.blocked_s - blocked)
