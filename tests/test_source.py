"""The source driver and its late flusher, stepped without time or threads (the clock and the wait are injected)."""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest

from flowgraph.runtime.counters import Counters
from flowgraph.runtime.failures import Stopped
from flowgraph.runtime.source import MAX_SLACK_S, LateFlusher, State, drive_source

LINGER_S = 0.005


class Clock:
    """A clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Outputs:
    """What the driver and the flusher see of a replica's outputs; ``flush`` is what the replica passes."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.linger_s = LINGER_S
        self.deadline = clock.now + LINGER_S
        self.chunk_items = 1024
        self.pending: list[Any] = []
        self.chunks: list[int] = []
        self.sent: list[list[Any]] = []
        self.flushed_at: list[float] = []
        self.late_flushes = 0

    def emit_many(self, items: list[Any]) -> None:
        self.chunks.append(len(items))
        self.pending += items

    def has_pending(self) -> bool:
        return bool(self.pending)

    def flush(self) -> None:
        if self.pending:
            self.sent.append(self.pending)
            self.pending = []
        self.flushed_at.append(self.clock.now)
        self.deadline = self.clock.now + self.linger_s

    def late_flush(self) -> None:
        """The flusher's flush (the replica's thread calls ``flush`` itself)."""
        self.late_flushes += 1
        self.flush()


def flusher_for(outputs: Outputs, counters: Counters | None = None, **options: Any) -> LateFlusher:
    return LateFlusher(outputs, counters or Counters(), outputs.late_flush, clock=outputs.clock, **options)


@pytest.fixture
def outputs() -> Outputs:
    return Outputs(Clock())


def test_the_flusher_parks_while_nothing_can_come_due(outputs):
    flusher = flusher_for(outputs)
    flusher.enter(watch=False)
    assert flusher.step(1.0) is None
    assert flusher.state is State.PARKED and outputs.flushed_at == []


def test_a_watching_flusher_waits_until_linger_after_the_deadline(outputs):
    flusher = flusher_for(outputs)
    flusher.enter(watch=True)
    assert flusher.step(0.001) == pytest.approx(outputs.deadline + LINGER_S - 0.001)
    assert flusher.state is State.WATCHING and outputs.flushed_at == []


def test_once_due_it_sends_what_the_generator_yielded_so_far_and_every_pending_batch(outputs):
    counters = Counters()
    flusher = flusher_for(outputs, counters)
    outputs.emit_many(["earlier"])
    flusher.enter(watch=True)
    flusher.taken.extend(["a", "b"])  # yielded, then the generator blocks
    outputs.clock.now = 0.011
    assert flusher.step(outputs.clock.now) == 0.0
    assert outputs.sent == [["earlier", "a", "b"]] and counters.items_out == 2 and outputs.late_flushes == 1
    assert not flusher.taken and flusher.state is State.WATCHING
    assert flusher.step(outputs.clock.now) == pytest.approx(2 * LINGER_S)  # the next deadline, plus linger
    with flusher.lock:
        assert flusher.leave() is True  # the replica's thread learns that items were taken from its chunk


def test_it_never_touches_the_outputs_while_the_replica_thread_is_outside_the_generator(outputs):
    flusher = flusher_for(outputs)
    flusher.enter(watch=True)
    with flusher.lock:
        assert flusher.leave() is False
    outputs.emit_many(["pending"])
    assert flusher.step(1.0) == LINGER_S
    assert outputs.sent == [] and outputs.flushed_at == []


def test_a_busy_source_that_flushes_by_itself_is_not_flushed_by_the_flusher(outputs):
    flusher = flusher_for(outputs)
    for _ in range(20):  # each chunk: into the generator, back, flush when due, as drive_source does
        flusher.enter(watch=True)
        outputs.clock.now += 0.002
        assert flusher.step(outputs.clock.now) > 0
        with flusher.lock:
            flusher.leave()
            if outputs.clock.now >= outputs.deadline:
                outputs.flush()
    assert flusher.state is State.WATCHING
    assert len(outputs.flushed_at) == 6 and outputs.late_flushes == 0


def test_the_flusher_looks_later_and_later_while_the_replica_thread_keeps_up_and_at_once_after_it_fell_behind(
        outputs):
    flusher = flusher_for(outputs)
    flusher.enter(watch=True)
    slacks = []
    for _ in range(6):  # each time it wakes, the replica's thread has flushed meanwhile
        flusher.step(outputs.clock.now)
        slacks.append(flusher.slack_s)
        outputs.clock.now += 0.004
        outputs.flush()
    assert slacks == pytest.approx([LINGER_S, 2 * LINGER_S, 4 * LINGER_S, 8 * LINGER_S, MAX_SLACK_S, MAX_SLACK_S])
    outputs.clock.now = outputs.deadline + MAX_SLACK_S  # now the generator blocks past the deadline
    assert flusher.step(outputs.clock.now) == 0.0 and outputs.late_flushes == 1
    assert flusher.slack_s == LINGER_S
    flusher.enter(watch=True)
    flusher.step(outputs.clock.now)
    flusher.enter(watch=False)
    assert flusher.step(outputs.clock.now) is None and flusher.slack_s == LINGER_S


def test_an_error_while_flushing_stops_the_flusher_and_is_raised_in_the_replica_thread(outputs):
    def stopped() -> None:
        raise Stopped("stop requested")

    flusher = LateFlusher(outputs, Counters(), stopped, clock=outputs.clock)
    flusher.enter(watch=True)
    assert flusher.step(1.0) == 0.0 and flusher.state is State.STOPPED
    with flusher.lock, pytest.raises(Stopped, match="stop requested"):
        flusher.leave()


class Gate:
    """The flusher thread's wait, stepped by the test: each wait is reported and returns when the test says."""

    def __init__(self) -> None:
        self.waits: queue.Queue[float | None] = queue.Queue()
        self._go: queue.Queue[None] = queue.Queue()
        self._open = threading.Event()

    def __call__(self, condition: threading.Condition, timeout_s: float | None) -> None:
        if self._open.is_set():
            return
        self.waits.put(timeout_s)
        condition.release()  # as Condition.wait does: the replica's thread may take the lock meanwhile
        try:
            self._go.get(timeout=10)
        finally:
            condition.acquire()

    def next_wait(self) -> float | None:
        return self.waits.get(timeout=10)

    def release(self) -> None:
        self._go.put(None)

    def open(self) -> None:
        """Let every wait from now on return at once (to stop the thread)."""
        self._open.set()
        self._go.put(None)


def test_the_flusher_thread_sends_items_a_blocked_generator_yielded_when_they_are_due(outputs):
    gate = Gate()
    flusher = flusher_for(outputs, wait=gate)
    flusher.start()
    try:
        assert gate.next_wait() is None  # parked
        flusher.enter(watch=True)
        flusher.taken.extend([1, 2, 3])
        gate.release()
        assert gate.next_wait() == pytest.approx(2 * LINGER_S)  # watching: the deadline, plus linger
        outputs.clock.now = 0.010
        gate.release()
        assert gate.next_wait() == pytest.approx(2 * LINGER_S)  # it flushed, and watches the next deadline
        assert outputs.sent == [[1, 2, 3]] and outputs.flushed_at == [0.010]
    finally:
        gate.open()
        flusher.stop()
    assert flusher.state is State.STOPPED


def items_taking(clock: Clock, seconds_per_item: float, count: int):
    for n in range(count):
        clock.now += seconds_per_item
        yield n


def test_a_fast_source_goes_out_in_growing_chunks_and_ends_when_its_generator_does(outputs):
    counters = Counters()
    drive_source(items_taking(outputs.clock, 0.00001, 3000), outputs, counters, outputs.flush, flusher_for(outputs),
                 clock=outputs.clock)
    assert outputs.chunks[:6] == [1, 2, 4, 8, 16, 32] and sum(outputs.chunks) == 3000
    assert [item for batch in outputs.sent for item in batch] + outputs.pending == list(range(3000))
    assert counters.items_out == 3000 and counters.busy_s == pytest.approx(outputs.clock.now)


def test_a_slow_source_sends_every_item_at_once(outputs):
    counters = Counters()
    drive_source(items_taking(outputs.clock, 0.002, 5), outputs, counters, outputs.flush, flusher_for(outputs),
                 clock=outputs.clock)
    assert outputs.sent == [[0], [1], [2], [3], [4]]
