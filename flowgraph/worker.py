"""One replica: register → address book → setup → start barrier → items → finish → EOS → teardown.

``run_replica`` is the same in a worker process and in a thread of an
``--inproc`` run; it talks to the launcher only through its ``ControlPipe``
(the agent thread forwards) and never raises: whatever goes wrong is
reported as an ``error`` message carrying node, replica, host, phase, the
traceback (user frames only) and the item being processed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from itertools import islice
from operator import length_hint
from types import GeneratorType
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import zmq

from ._operator import Operator, emitted, generated, make_operator
from .channel import ControlPipe, Inputs, ProtocolError, Stopped, Wiring, monitor_handshakes
from .outputs import Outputs, SerializationError
from .context import Context, set_context
from .counters import Counters
from .dsl import NodeKind, NodeSpec
from .plan import Plan, ReplicaPlan

log = logging.getLogger(__name__)

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_ITEM_REPR_CHARS = 200
_SLICE_S = 0.001
"""A node works through its input in slices of about this long between checks for due batches."""
_MAX_SLICE = 1024
_IDLE_WAIT_MS = 1000
_NONE = type(None)
_LATE_SLACK_S = 0.05
"""While a source keeps flushing by itself, its flusher looks up to this much later than the deadline."""


@dataclass(frozen=True)
class ReplicaJob:
    """Everything one replica needs, besides its sockets."""

    plan: Plan
    replica: ReplicaPlan
    node: NodeSpec
    token: bytes
    wiring: Wiring
    """Where data sockets bind, what they advertise, CURVE keys."""
    params: Mapping[str, Any] = field(default_factory=dict)
    collect: bool = False
    """Record every input item and hand the list to the launcher (``flowgraph.testing``)."""


class _LateFlush(threading.Thread):
    """Sends a source's due items while its generator blocks (waiting for input, say).

    The generator runs in the replica's thread, which may stay in it as long
    as the source likes; items it yielded before must not wait with it. The
    replica's thread collects a chunk into ``taken``; while it watches (see
    ``arm``), this thread wakes ``linger_ms`` after the deadline (the
    replica's thread, when not blocked, flushes within half a millisecond of
    it) and, if the replica's thread is still in the generator and nothing
    was flushed meanwhile, takes the items collected so far and flushes them
    with whatever batches are pending. While the replica's thread keeps
    flushing by itself (a busy source), this thread looks less and less
    often, up to ``_LATE_SLACK_S`` after the deadline; it is not woken per
    chunk, which would cost the busy source a GIL hand-over each time.
    Everything that touches the outputs holds ``lock``; a mutex also gives
    ZeroMQ sockets the memory barrier they need to be used by two threads in
    turn. What goes wrong here (a stop, an unencodable item) is raised in the
    replica's thread at its next chunk.
    """

    def __init__(self, outputs: Outputs, counters: Counters, flush: Callable[[], None]) -> None:
        super().__init__(name="flowgraph-late-flush", daemon=True)
        self.lock = threading.Condition(threading.Lock())
        self.taken: deque[Any] = deque()
        self.took = False
        """Items were taken from ``taken`` by this thread since the replica's thread last looked."""
        self._outputs = outputs
        self._counters = counters
        self._flush = flush
        self._watch = False
        self._inside = False
        """The replica's thread is in the generator (or about to go in)."""
        self._idle = False
        self._stopping = False
        self._error: BaseException | None = None
        self.start()

    def arm(self, watch: bool) -> None:
        """The replica's thread goes into the generator (without holding the lock).

        ``watch``: something could become due meanwhile (a batch is pending,
        or the generator is asked for more than one item). Until a chunk is
        taken without it, this thread keeps looking; without it, this
        thread sleeps, so a slow source costs no wake-ups.
        """
        with self.lock:
            self._raise_error()
            self._inside = True
            self._watch = watch
            if watch and self._idle:
                self.lock.notify()

    def disarm(self) -> None:
        """The replica's thread is back (holding the lock)."""
        self._inside = False
        self._raise_error()

    def stop(self) -> None:
        with self.lock:
            self._stopping = True
            self.lock.notify()
        self.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def run(self) -> None:
        outputs, taken, lock = self._outputs, self.taken, self.lock
        least = outputs.linger_s  # the replica's thread flushes within a chunk of the deadline: leave it time
        slack, waited = least, False
        with lock:
            while not self._stopping and self._error is None:
                if not self._watch:
                    self._idle = True
                    lock.wait()
                    self._idle, slack, waited = False, least, False
                    continue
                wait = outputs.deadline + slack - time.monotonic()
                if wait > 0 or not self._inside:
                    if waited:  # the replica's thread flushed meanwhile, or is about to: it keeps up
                        slack = min(2 * slack, _LATE_SLACK_S)
                    waited = True
                    lock.wait(wait if wait > 0 else slack)
                    continue
                slack, waited = least, False
                items = [taken.popleft() for _ in range(len(taken))]  # the generator may be appending
                try:
                    if items:
                        self.took = True
                        outputs.emit_many(items)
                        self._counters.items_out += len(items)
                    self._flush()
                except BaseException as error:  # handed to the replica's thread
                    self._error = error


class _Failure(Exception):
    """A phase of the replica failed; carries what the launcher reports."""

    def __init__(self, phase: str, error: BaseException, item: Any = None, has_item: bool = False) -> None:
        super().__init__(phase)
        self.phase = phase
        self.error = error
        self.item_repr = _short_repr(item) if has_item else None


def run_configured(config: Mapping[str, Any], context: zmq.Context, control: ControlPipe,
                   counters: Counters) -> bool:
    """Unpickle the node code a worker configuration carries and run that replica.

    ``config`` is what ``WorkerConfig.for_replica`` made. A failure to
    unpickle (a module missing here, a ``__reduce__`` that raises) is
    reported like any other error, in phase ``load``.
    """
    node_name, index = config["replica"]
    try:
        plan = cloudpickle.loads(config["plan"])
        node = cloudpickle.loads(config["node"])
    except Exception as error:  # unpickling can raise anything user code raises
        _send_error(control, _Failure("load", error))
        return False
    job = ReplicaJob(
        plan=plan,
        replica=plan.replica(node_name, index),
        node=node,
        token=config["token"],
        wiring=Wiring(config["bind_base"], config["advertise"], config["curve"]),
        params=config["params"],
        collect=config["collect"],
    )
    return run_replica(job, context, control, counters)


def run_replica(job: ReplicaJob, context: zmq.Context, control: ControlPipe, counters: Counters) -> bool:
    """Run one replica to its end, counting in ``counters``; True if it finished cleanly."""
    runner = _Replica(job, context, control, counters)
    set_context(runner.context)
    try:
        return runner.run()
    finally:
        set_context(None)


class _Replica:
    def __init__(self, job: ReplicaJob, context: zmq.Context, control: ControlPipe, counters: Counters) -> None:
        self.job = job
        self.zmq_context = context
        self.control = control
        self.counters = counters
        replica = job.replica
        self.context = Context(replica.node, replica.index, job.node.parallelism, replica.host, job.params)
        self.inputs = Inputs(context, job.plan, replica, job.token, control, job.wiring, counters)
        self.outputs = Outputs(job.plan, replica, job.token, control, job.wiring, counters)
        self.collected: list[Any] = []

    def run(self) -> bool:
        operator: Operator | None = None
        failure: _Failure | None = None
        try:
            self._wire_up()
            operator = self._call("setup", make_operator, self.job.node)
            self._call("setup", operator.setup)
            self.control.send("ready", {})
            self._wait_for("start")
            self.counters.started_at = time.time()
            if self.job.node.kind is NodeKind.SOURCE:
                self._generate(operator)
            else:
                self._process(operator)
            self._emit_all("finish", operator.finish)
            self.outputs.send_eos()
        except Stopped:
            self._teardown(operator)
            self._close()
            return False
        except _Failure as caught:
            failure = caught
        except SerializationError as error:
            failure = _Failure("send", error)
        except Exception as error:  # a bug or a broken peer: report it like a user error
            failure = _Failure("runtime", error)
        teardown_failure = self._teardown(operator)
        failure = failure or teardown_failure
        if failure is not None:
            _send_error(self.control, failure)
        else:
            done = {**self.counters.snapshot(), "ended_at": time.time()}
            self.control.send("done", done, self.collected if self.job.collect else None)
        try:
            self._wait_for("shutdown")
        except Stopped:
            pass
        self._close()
        return failure is None

    def _wire_up(self) -> None:
        endpoints = {
            **self.inputs.bind(),
            **self.outputs.bind(self.zmq_context),
        }
        if not self.job.wiring.is_inproc:
            monitors = [monitor_handshakes(socket) for socket in [*self.inputs.bound, *self.outputs.bound]]
            self.control.send("monitor", {"endpoints": monitors})
        self.control.send("register", {"endpoints": endpoints, "pid": os.getpid()})
        address_book = self._wait_for("address_book")["replicas"]
        self.outputs.connect(self.zmq_context, address_book)
        self.inputs.connect(address_book)
        self.outputs.wait_for_subscribers()

    def _wait_for(self, kind: str) -> dict[str, Any]:
        while True:
            message = self.control.receive(None)
            if message is None:
                continue
            got, body = message
            if got == kind:
                return body
            log.warning("%s: ignored control message %r while waiting for %r", self.job.replica.id, got, kind)

    def _generate(self, operator: Operator) -> None:
        """Emit what the source yields, in chunks taken at C speed; a slow source's items go out at once.

        A chunk is taken with ``islice``, so a fast source pays nothing per
        item here. Its size adapts so a chunk takes about half of ``_SLICE_S``
        (up to a batch). A source that takes ``_SLICE_S`` or more per item is
        slow: its items are sent at once, not held for a batch. Partial
        batches go out ``linger_ms`` after the last flush, even while the
        generator blocks (``_LateFlush``). A source's busy time is its wall
        time less the time it was blocked.
        """
        outputs, counters = self.outputs, self.counters
        clock = time.monotonic
        started = clock()
        blocked = counters.blocked_s
        size, most = 1, outputs.chunk_items
        late = _LateFlush(outputs, counters, self._flush_and_check)
        taken = late.taken
        try:
            items = generated(operator.generate())
            while True:
                began, asked = clock(), size
                late.arm(asked > 1 or outputs.has_pending())
                taken.extend(islice(items, asked))  # the flusher may take items from the left meanwhile
                with late.lock:
                    late.disarm()
                    chunk = list(taken)
                    taken.clear()
                    now = clock()
                    taking = now - began
                    if chunk:
                        outputs.emit_many(chunk)
                        counters.items_out += len(chunk)
                    if taking >= _SLICE_S * max(1, len(chunk)):
                        size = 1
                        self._flush_and_check()
                    else:
                        size = min(size * 2, most) if taking < _SLICE_S / 2 else max(1, size // 2)
                        if now >= outputs.deadline:
                            self._flush_and_check()
                    counters.busy_s = now - started - (counters.blocked_s - blocked)
                    if len(chunk) < asked and not late.took:  # islice ran out: the source is done
                        break
                    late.took = False
        except (Stopped, SerializationError):
            raise
        except Exception as error:
            raise _Failure("generate", error) from error
        finally:
            late.stop()
        counters.busy_s = clock() - started - (counters.blocked_s - blocked)

    def _process(self, operator: Operator) -> None:
        """Run ``process`` on every input item, in slices sized to take about ``_SLICE_S``.

        Outputs of a slice are handed on together; between slices partial
        batches go out when due, so a slow node still sends promptly while a
        fast one pays per-item costs only where the user's code runs.
        """
        inputs, outputs, counters = self.inputs, self.outputs, self.counters
        has_outputs = bool(outputs.edges)
        clock = time.monotonic
        collect = self.collected.extend if self.job.collect else None
        size = 1
        while True:
            try:
                batch = inputs.receive()
                if batch is None:
                    if inputs.is_done:
                        return
                    outputs.flush()
                    batch = inputs.wait_receive(_IDLE_WAIT_MS)
            except ProtocolError as error:
                raise _Failure("receive", error) from error
            if batch is None:
                continue
            upstream, items = batch
            self.context.input = upstream
            if collect is not None:
                collect(items)
            start, count = 0, len(items)
            while start < count:
                chunk = items if start == 0 and size >= count else items[start:start + size]
                began = clock()
                blocked = counters.blocked_s
                results = _run(operator, chunk, has_outputs)
                if results:
                    outputs.emit_many(results)
                    counters.items_out += len(results)
                now = clock()
                elapsed = now - began
                counters.busy_s += elapsed - (counters.blocked_s - blocked)
                counters.items_in += len(chunk)
                size = min(size * 2, _MAX_SLICE) if elapsed < _SLICE_S else max(1, size // 2)
                start += len(chunk)
                if now >= outputs.deadline:
                    self._flush_and_check()

    def _emit_all(self, phase: str, method: Any) -> None:
        self.context.input = None
        started = time.monotonic()
        try:
            results = list(emitted(method()))
        except Stopped:
            raise
        except Exception as error:
            raise _Failure(phase, error) from error
        if self.outputs.edges and results:
            self.outputs.emit_many(results)
            self.counters.items_out += len(results)
        self.counters.busy_s += time.monotonic() - started

    def _flush_and_check(self) -> None:
        self.outputs.flush()
        self.control.raise_if_stopped()

    def _call(self, phase: str, function: Any, *args: Any) -> Any:
        try:
            return function(*args)
        except Stopped:
            raise
        except Exception as error:
            raise _Failure(phase, error) from error

    def _teardown(self, operator: Operator | None) -> _Failure | None:
        if operator is None:
            return None
        try:
            operator.teardown()
        except Exception as error:
            log.error("%s: teardown() failed: %r", self.job.replica.id, error)
            return _Failure("teardown", error)
        return None

    def _close(self) -> None:
        self.inputs.close()
        self.outputs.close()


def _run(operator: Operator, chunk: list[Any], keep: bool) -> list[Any]:
    """The outputs of ``process`` on each item of ``chunk`` (or nothing when not ``keep``).

    A plain function runs through ``map`` (a loop in C); when it raises, the
    list iterator tells how far it got, so the failure still names the item.
    Generators a plain function returns are run. Raises ``_Failure``.
    """
    process = operator.process
    if operator.yields:
        results: list[Any] = []
        append = results.append
        index = 0
        try:
            for index, item in enumerate(chunk):
                for output in process(item):
                    append(output)
        except Stopped:
            raise
        except Exception as error:
            raise _Failure("process", error, chunk[index], has_item=True) from error
        return results if keep else []
    items = iter(chunk)
    try:
        results = list(map(process, items))
    except Stopped:
        raise
    except Exception as error:
        failed = len(chunk) - length_hint(items) - 1
        raise _Failure("process", error, chunk[failed], has_item=True) from error
    if not keep:  # a sink: only a returned generator matters (run it); most return None, counted at C speed
        if results.count(None) != len(results) and GeneratorType in map(type, results):
            _expand(results, chunk)
        return []
    kinds = set(map(type, results))  # one pass in C for both checks
    if GeneratorType in kinds:  # a function that returned a generator: run it
        results = _expand(results, chunk)
    elif _NONE not in kinds:
        return results
    return [result for result in results if result is not None]


def _expand(results: list[Any], chunk: list[Any]) -> list[Any]:
    expanded: list[Any] = []
    for result, item in zip(results, chunk):
        if type(result) is not GeneratorType:
            expanded.append(result)
            continue
        try:
            expanded.extend(result)
        except Exception as error:
            raise _Failure("process", error, item, has_item=True) from error
    return expanded


def _send_error(control: ControlPipe, failure: _Failure) -> None:
    error = failure.error
    control.send("error", {
        "phase": failure.phase,
        "message": f"{type(error).__name__}: {error}",
        "traceback": user_traceback(error),
        "item": failure.item_repr,
    })


def user_traceback(error: BaseException) -> str:
    """The traceback of ``error`` without flowgraph's and importlib's frames."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith((_PACKAGE_DIR, "<frozen "))]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames),
             *traceback.format_exception_only(type(error), error)]
    return "".join(lines)


def _short_repr(item: Any) -> str:
    try:
        text = repr(item)
    except Exception as error:  # a broken __repr__ must not hide the real error
        text = f"<{type(item).__name__} with failing repr: {error!r}>"
    return text if len(text) <= _ITEM_REPR_CHARS else text[: _ITEM_REPR_CHARS - 3] + "..."
