"""Many items in flight in one replica (``concurrency=N``): an event loop for ``async def``, else a thread pool.

The replica's thread stays the only one that touches sockets and counters.
It admits items into a ``Window`` and hands each to a ``Runner``: an
``AsyncRunner`` runs ``async def process`` (and async ``setup``/``finish``/
``teardown``) on an asyncio event loop in a thread of its own that lives
as long as the replica; a ``ThreadRunner`` runs a blocking ``process`` on
N threads. Each item's attempts (retries with backoff, as the node's error
policy says) happen there; its ``Outcome`` comes back through
``Completions``, a queue with an ``eventfd`` the replica's poll watches
beside its sockets, so a completion wakes a replica waiting for input.

Back in the replica thread, results leave in input order (or as they
complete, ``ordered=False``), the error policy gives up on an item as it
would without concurrency, and a batch is acknowledged (with restarts)
once all its items left. A full window takes no new item, so backpressure
holds. At a checkpoint barrier, every item in flight is completed before
the barrier is passed on: the items before a barrier are in the state it
snapshots, none is replayed. ``finish()`` runs once the window is empty.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import zmq

from ..errors import Phase
from ..model.policy import DeadLetter, ErrorPolicy
from .context import Context, item_input, set_context
from .counters import Counters
from .failures import Failure, ProtocolError, Stopped
from .guard import ItemGuard, retry_wait_s, set_aside
from .inputs import Barrier, Batch, Inputs
from .operator import Operator, emitted
from .outputs import Outputs
from .pipe import ControlPipe
from .window import Window


@dataclass(frozen=True)
class Outcome:
    """How one item ended in the runner: its outputs, or the error of its last attempt."""

    outputs: list[Any]
    error: Exception | None = None
    attempts: int = 1

    @property
    def retries(self) -> int:
        return self.attempts - 1


class Completions:
    """Outcomes handed from the runner's threads to the replica thread; ``fd`` is readable while some wait."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[int, Outcome]] = queue.SimpleQueue()
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()
        self._closed = False

    def put(self, ticket: int, outcome: Outcome) -> None:
        """From any thread; dropped once closed (a stopped replica's late item: its descriptor is gone)."""
        with self._lock:
            if self._closed:
                return
            self._queue.put((ticket, outcome))
            os.eventfd_write(self.fd, 1)

    def take(self) -> list[tuple[int, Outcome]]:
        """What completed since the last call (the replica thread)."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            return []
        taken = []
        while True:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                return taken

    def close(self) -> None:
        with self._lock:
            self._closed = True
            os.close(self.fd)


class AsyncRunner:
    """An asyncio event loop in a thread of its own, for one replica's coroutines."""

    def __init__(self, context: Context, control: ControlPipe, stop_check_s: float) -> None:
        self._control = control
        self._stop_check_s = stop_check_s
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(context,), name=f"flowgraph-loop-{context.node}",
                                        daemon=True)
        self._thread.start()

    def _serve(self, context: Context) -> None:
        set_context(context)
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, awaitable: Awaitable[Any]) -> Any:
        """Run ``awaitable`` on the loop and return its result, looking for a stop meanwhile (raises ``Stopped``)."""
        future = asyncio.run_coroutine_threadsafe(_awaited(awaitable), self.loop)
        while True:
            try:
                return future.result(self._stop_check_s)
            except concurrent.futures.TimeoutError:
                try:
                    self._control.raise_if_stopped()
                except Stopped:
                    future.cancel()
                    raise

    def submit(self, job: Callable[[], Awaitable[None]]) -> None:
        asyncio.run_coroutine_threadsafe(_awaited(job()), self.loop)

    def close(self) -> None:
        """Cancel what still runs and end the loop's thread (waiting a moment for the cancellations)."""
        if self.loop.is_closed():
            return

        async def cancel_all() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=1.0) if tasks else None

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(2.0)
            except (concurrent.futures.TimeoutError, RuntimeError):
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(2.0)
        if not self._thread.is_alive():
            self.loop.close()


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class ThreadRunner:
    """N threads for a blocking ``process``."""

    def __init__(self, context: Context, threads: int) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"flowgraph-{context.node}",
                                                           initializer=set_context, initargs=(context,))

    def submit(self, job: Callable[[], Any]) -> None:
        self._pool.submit(job)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Attempts:
    """One item's attempts, as the node's error policy allows, in the runner; puts its ``Outcome``."""

    def __init__(self, operator: Operator, policy: ErrorPolicy, completions: Completions,
                 stopping: threading.Event, rng: random.Random | None = None) -> None:
        self._process = operator.process
        self._policy = policy
        self._completions = completions
        self._stopping = stopping
        self._rng = rng or random.Random()

    async def run_async(self, ticket: int, item: Any, upstream: str | None) -> None:
        item_input.set(upstream)
        attempts = 0
        while True:
            attempts += 1
            try:
                result = self._process(item)
                if inspect.isasyncgen(result):
                    outputs = [output async for output in result]
                else:
                    outputs = list(emitted(await result if inspect.isawaitable(result) else result))
            except Exception as error:  # user code: anything
                wait_s = retry_wait_s(self._policy, error, attempts, self._rng)
                if wait_s is None:
                    self._completions.put(ticket, Outcome([], error, attempts))
                    return
                await asyncio.sleep(wait_s)
                continue
            self._completions.put(ticket, Outcome(outputs, None, attempts))
            return

    def run_blocking(self, ticket: int, item: Any, upstream: str | None) -> None:
        item_input.set(upstream)
        attempts = 0
        while True:
            attempts += 1
            try:
                outputs = list(emitted(self._process(item)))
            except Exception as error:  # user code: anything
                wait_s = retry_wait_s(self._policy, error, attempts, self._rng)
                if wait_s is None:
                    self._completions.put(ticket, Outcome([], error, attempts))
                    return
                if self._stopping.wait(wait_s):
                    return
                continue
            self._completions.put(ticket, Outcome(outputs, None, attempts))
            return


@dataclass
class _Taken:
    """A batch whose items are in flight: it is acknowledged once all of them left."""

    batch: Batch
    left: int


class ConcurrentDriver:
    """``drive_node`` for a node with ``concurrency=N`` or an ``async def process``."""

    def __init__(self, operator: Operator, runner: AsyncRunner | ThreadRunner, inputs: Inputs, outputs: Outputs,
                 counters: Counters, context: Context, control: ControlPipe, policy: ErrorPolicy,
                 concurrency: int, ordered: bool, guard: ItemGuard) -> None:
        self._runner = runner
        self._inputs = inputs
        self._outputs = outputs
        self._counters = counters
        self._context = context
        self._control = control
        self._policy = policy
        self._guard = guard
        self._window: Window[Outcome] = Window(concurrency, ordered)
        self._completions = Completions()
        self._stopping = threading.Event()
        self._attempts = Attempts(operator, policy, self._completions, self._stopping)
        self._pending: deque[tuple[Any, _Taken]] = deque()
        """Items of the batches taken, not admitted yet."""
        self._taken: deque[_Taken] = deque()
        """Batches with items in flight, oldest first."""
        self._poller = zmq.Poller()
        self._poller.register(self._completions.fd, zmq.POLLIN)
        self._poller.register(control.socket, zmq.POLLIN)
        inputs.watch_fd(self._completions.fd)

    def run(self, flush: Callable[[], None], flush_idle: Callable[[], None], idle_wait_ms: int,
            collect: Callable[[list[Any]], None] | None, barrier: Callable[[int], None] | None) -> None:
        """Every item of every input through ``process``, until end of stream and nothing in flight."""
        try:
            self._run(flush, flush_idle, idle_wait_ms, collect, barrier)
        finally:
            self._stopping.set()
            self._completions.close()

    def _run(self, flush: Callable[[], None], flush_idle: Callable[[], None], idle_wait_ms: int,
             collect: Callable[[list[Any]], None] | None, barrier: Callable[[int], None] | None) -> None:
        inputs, window, counters = self._inputs, self._window, self._counters
        held: Barrier | None = None
        busy_since = time.monotonic()
        while True:
            self._release(self._completions.take())
            while not window.full:
                if self._pending:  # what came before a held barrier is admitted too
                    self._admit(*self._pending.popleft())
                    continue
                if held is not None:
                    break
                found = self._receive(inputs.receive)
                if found is None:
                    break
                if isinstance(found, Barrier):
                    held = found
                else:
                    self._take(found, collect)
            counters.in_flight = len(window) + len(self._pending)
            counters.peak_in_flight = max(counters.peak_in_flight, len(window))
            if held is not None and not len(window) and not self._pending:
                assert barrier is not None, "barriers come only in a run with checkpoints"
                barrier(held.checkpoint)
                held = None
                continue
            now = time.monotonic()
            if len(window):
                counters.busy_s += now - busy_since
            busy_since = now
            if held is None and not len(window) and not self._pending and inputs.is_done:
                return
            if window.full or held is not None:
                self._wait_for_completions(flush, idle_wait_ms)
                continue
            flush_idle()
            wait_ms = self._outputs.retry_ms if self._outputs.spill_backlog else idle_wait_ms
            found = self._receive(functools.partial(inputs.wait_receive, wait_ms))
            if isinstance(found, Barrier):
                held = found
            elif found is not None:
                self._take(found, collect)

    def _receive(self, receive: Callable[[], Batch | Barrier | None]) -> Batch | Barrier | None:
        try:
            return receive()
        except ProtocolError as error:
            raise Failure(Phase.RECEIVE, error) from error

    def _take(self, batch: Batch, collect: Callable[[list[Any]], None] | None) -> None:
        """Queue a batch's items for admission (a poison batch's one item is set aside at once)."""
        if collect is not None:
            collect(batch.items)
        if batch.poison:
            letter = set_aside(batch.items[0], self._policy, self._counters, self._context)
            if letter is not None:
                self._outputs.emit_dead_letters([letter])
            self._counters.items_in += 1
            self._taken.append(_Taken(batch, 0))
            self._acknowledge()
            return
        taken = _Taken(batch, len(batch.items))
        self._taken.append(taken)
        self._pending.extend((item, taken) for item in batch.items)

    def _admit(self, item: Any, taken: _Taken) -> None:
        ticket = self._window.admit((item, taken))
        upstream = taken.batch.upstream
        if isinstance(self._runner, AsyncRunner):
            self._runner.submit(lambda: self._attempts.run_async(ticket, item, upstream))
        else:
            self._runner.submit(lambda: self._attempts.run_blocking(ticket, item, upstream))

    def _release(self, completed: list[tuple[int, Outcome]]) -> None:
        """Take what completed; send on what may leave; acknowledge the batches all of whose items left."""
        if not completed:
            return
        window, counters, outputs = self._window, self._counters, self._outputs
        for ticket, outcome in completed:
            window.complete(ticket, outcome)
        results: list[Any] = []
        letters: list[DeadLetter] = []
        for _, (item, taken), outcome in window.release():
            counters.errors += outcome.retries + (outcome.error is not None)
            counters.retries += outcome.retries
            if outcome.error is not None:
                if results and outputs.emits_items:  # what completed before it leaves first
                    outputs.emit_many(results)
                    counters.items_out += len(results)
                    results = []
                self._guard.give_up(item, outcome.error, outcome.attempts, letters)
            else:
                results += outcome.outputs
            counters.items_in += 1
            if taken.batch.loop:
                counters.loop_done += 1
            taken.left -= 1
        if letters:
            outputs.emit_dead_letters(letters)
        if results and outputs.emits_items:
            outputs.emit_many(results)
            counters.items_out += len(results)
        self._acknowledge()

    def _acknowledge(self) -> None:
        acks = self._inputs.acks
        while self._taken and self._taken[0].left == 0:
            batch = self._taken.popleft().batch
            if acks.active:
                acks.processed(batch.sender, batch.incarnation, batch.seq, self._outputs.watermark())

    def _wait_for_completions(self, flush: Callable[[], None], idle_wait_ms: int) -> None:
        """The window is full (or a barrier waits for it to empty): wait for a completion, serving the control
        pipe; partial batches go out when due."""
        outputs = self._outputs
        wait_ms = idle_wait_ms
        if outputs.has_pending():
            wait_ms = max(0, min(wait_ms, round((outputs.deadline - time.monotonic()) * 1000)))
        events = dict(self._poller.poll(wait_ms))
        if self._control.socket in events:
            self._control.raise_if_stopped()
        if time.monotonic() >= outputs.deadline:
            flush()
