"""One replica: register → address book → setup → start barrier → items → finish → EOS → teardown.

A loop's head ends differently: once the loop drained it finishes and
sends end of stream, then takes the end of stream that comes round on its
feedback edges (an item there fails the run: ``finish()`` of a node in the
loop emitted into the loop after it drained).

In a run with checkpoints, a replica restored from one puts its state back
after ``setup()``; one that had ended then sends end of stream at once (its
``finish()`` ran already, in the history the checkpoint keeps).

``run_replica`` is the same in a worker process and in a thread of an
``--inproc`` run; it talks to the launcher only through its ``ControlPipe``
(the agent thread forwards) and never raises: whatever goes wrong is
reported as a ``Failed`` message carrying the phase, the traceback (user
frames only), the item being processed and the counters so far.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, TypeVar

import cloudpickle
import zmq

from ..errors import Phase, user_traceback
from ..model.dsl import NodeKind, NodeSpec
from ..model.plan import Plan, ReplicaPlan
from ..settings import Timeouts
from ..wire.control import (
    AddressBook,
    Commit,
    Committed,
    Done,
    Failed,
    Heartbeat,
    LoopCounts,
    Probe,
    Ready,
    Register,
    Shutdown,
    Start,
)
from ..wire.pickling import remember_sources
from .concurrent import AsyncRunner, ConcurrentDriver, ThreadRunner
from .config import WorkerConfig
from .context import Context, set_context
from .counters import Counters
from .edges import EdgeSetup
from .failures import Failure, LateFeedback, SerializationError, Stopped
from .guard import ItemGuard
from .inputs import Batch, Inputs
from .node import drive_node
from .operator import Operator, emitted, generated, make_operator
from .outputs import Outputs
from .pipe import ControlPipe, WatchHandshakes
from .snapshots import Snapshots
from .sockets import Wiring, monitor_handshakes, ready_to_read
from .source import LateFlusher, drive_source

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ReplicaJob:
    """Everything one replica needs, besides its sockets (``WorkerConfig`` with the code unpickled)."""

    plan: Plan
    replica: ReplicaPlan
    node: NodeSpec
    token: bytes
    wiring: Wiring
    """Where data sockets bind, what they advertise, CURVE keys."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    incarnation: int = 0
    """Which start of this replica (0 the first; a restarted one counts up)."""
    skip: int = 0
    """A restarted source: how many of its items were acknowledged already (its generator skips them)."""
    host: str | None = None
    """Where it runs now, if a restart moved it off its planned host (``context().host``)."""
    params: Mapping[str, Any] = field(default_factory=dict)
    collect: bool = False
    """Record every input item and hand the list to the launcher (``flowgraph.testing``)."""
    checkpointing: bool = False
    restore: Any = None
    """Its part of the checkpoint it starts from (a ``checkpoint.store.Part``), or None."""
    restored_from: int = 0
    """The id of that checkpoint (0: it starts from the beginning)."""


def run_configured(config: WorkerConfig, context: zmq.Context, control: ControlPipe, counters: Counters) -> bool:
    """Unpickle the node code a worker configuration carries and run that replica.

    A failure to unpickle (a module missing here, a ``__reduce__`` that
    raises) is reported like any other error, in phase ``load``.
    """
    remember_sources(config.sources)
    try:
        plan = cloudpickle.loads(config.plan)
        node = cloudpickle.loads(config.code)
    except Exception as error:  # unpickling can raise anything user code raises
        counters.ended_at = time.time()
        _report_failure(control, Failure(Phase.LOAD, error), counters)
        return False
    job = ReplicaJob(plan=plan, replica=plan.replica(config.node, config.index), node=node, token=config.token,
                     wiring=config.wiring, timeouts=config.timeouts, incarnation=config.incarnation,
                     skip=config.skip, host=config.host, params=config.params, collect=config.collect,
                     checkpointing=config.checkpointing, restore=config.restore, restored_from=config.restored_from)
    return run_replica(job, context, control, counters)


def run_replica(job: ReplicaJob, context: zmq.Context, control: ControlPipe, counters: Counters) -> bool:
    """Run one replica to its end, counting in ``counters``; True if it finished cleanly."""
    replica = _Replica(job, context, control, counters)
    set_context(replica.context)
    try:
        return replica.run()
    finally:
        set_context(None)


class _Replica:
    def __init__(self, job: ReplicaJob, context: zmq.Context, control: ControlPipe, counters: Counters) -> None:
        self.job = job
        self.zmq_context = context
        self.control = control
        self.counters = counters
        plan, replica = job.plan, job.replica
        self.context = Context(replica.node, replica.index, job.node.parallelism, job.host or replica.host,
                               job.params, job.incarnation, job.checkpointing, job.restored_from)
        self.inputs = Inputs(plan, replica, job.incarnation, job.token, control, job.wiring, counters,
                             job.timeouts.stop_check_ms)
        node_index = plan.node(replica.node).index
        self.outputs = Outputs(
            EdgeSetup(
                plan=edge, producer_node=node_index, producer=replica.index, replica_id=replica.id,
                incarnation=job.incarnation, consumer_node=plan.node(edge.downstream).index,
                connects=tuple(c for c in replica.connects if c.edge == edge.name and c.socket == "PUSH"),
                token=job.token, wiring=job.wiring, control=control, counters=counters, timeouts=job.timeouts,
                service=self._service,
            )
            for edge in plan.edges_from(replica.node)
        )
        counters.edges = {edge.plan.name: edge.stats for edge in self.outputs.edges}
        counters.incarnation = job.incarnation
        self.collected: list[Any] = []
        self._recoverable = plan.recoverable
        self._servicing = False
        self.snapshots: Snapshots | None = None
        self._skip = job.skip
        """How many items a restarted or restored source skips."""
        self._finished = job.restore is not None and job.restore.finished
        """Restored from a checkpoint in which it had ended: it only sends end of stream."""
        self._source_ended = False
        """A source's generator is done: a checkpoint asked for now is served by its final part."""
        if plan.node(replica.node).loop is not None:
            control.on_probe = self._loop_counts
        self._event_loop: AsyncRunner | None = None
        """The replica's asyncio event loop, made for its first ``async def`` method."""
        self._threads: ThreadRunner | None = None
        """A blocking node's threads, with ``concurrency=``."""

    def run(self) -> bool:
        """The replica's whole life; its sockets are closed whatever happens (after shutdown, or on a stop)."""
        with contextlib.ExitStack() as sockets:
            sockets.callback(self.outputs.close)
            sockets.callback(self.inputs.close)
            sockets.callback(self._close_runners)
            return self._live()

    def _close_runners(self) -> None:
        if self._threads is not None:
            self._threads.close()
        if self._event_loop is not None:
            self._event_loop.close()

    def _resolve(self, result: Any) -> Any:
        """What an ``async def`` method returned, run on the replica's event loop (its value; an async
        generator's items, as a generator of them, so ``emitted`` takes each); any other result as it is."""
        if not (inspect.isawaitable(result) or inspect.isasyncgen(result)):
            return result
        if inspect.isasyncgen(result):
            return (item for item in self._loop().run(_collected(result)))
        return self._loop().run(result)

    def _loop(self) -> AsyncRunner:
        """The replica's event loop, made at its first use."""
        if self._event_loop is None:
            self._event_loop = AsyncRunner(self.context, self.control, self.job.timeouts.stop_check_s)
        return self._event_loop

    def _live(self) -> bool:
        operator: Operator | None = None
        failure: Failure | None = None
        try:
            self._wire_up()
            operator = self._call(Phase.SETUP, make_operator, self.job.node)
            self._call(Phase.SETUP, operator.setup)
            self.inputs.acks.before_ack = operator.flush
            if self.job.checkpointing:
                self._restore(operator)
            self.control.send(Ready())
            self.control.wait_for(Start)
            self.counters.started_at = time.time()
            if not self._finished:  # a replica restored as it ended only sends end of stream
                if self.job.node.kind is NodeKind.SOURCE:
                    self._generate(operator)
                else:
                    self._process(operator)
                self._emit_all(Phase.FINISH, operator.finish)
            self.outputs.send_eos()
            if self.job.replica.feedback_eos:
                self._await_feedback_end()
            if self.snapshots is not None:
                self.snapshots.final()
        except Stopped:
            self._teardown(operator)
            self.counters.ended_at = time.time()
            self.control.send(Heartbeat(self.counters.snapshot()))  # its counters as far as it got
            return False
        except Failure as caught:
            failure = caught
        except SerializationError as error:
            failure = Failure(Phase.SEND, error)
        except Exception as error:  # a bug or a broken peer: report it like a user error
            failure = Failure(Phase.RUNTIME, error)
        try:
            if failure is None and self.snapshots is not None:
                failure = self._end_checkpointed(operator)
            else:
                failure = failure or self._teardown(operator)
                self.counters.ended_at = time.time()
                if failure is not None:
                    _report_failure(self.control, failure, self.counters)
                else:
                    self._send_done()
        except Stopped:
            return False
        try:
            self.control.wait_for(Shutdown, self._serve_when_done(), self.job.timeouts.stop_check_ms)
        except Stopped:
            pass
        return failure is None

    def _loop_counts(self, probe: Probe) -> LoopCounts:
        counters = self.counters
        return LoopCounts(probe.loop, probe.wave, counters.loop_sent, counters.loop_done,
                          self.inputs.external_ended and counters.in_flight == 0)

    def _await_feedback_end(self) -> None:
        """A loop's head, finished: take the end of stream of its feedback edges, which comes once the loop's
        nodes finished in turn."""
        inputs, wait_ms = self.inputs, self.job.timeouts.stop_check_ms
        while not inputs.feedback_ended:
            found = inputs.receive() or inputs.wait_receive(wait_ms)
            if isinstance(found, Batch) and found.items:
                error = LateFeedback(
                    f"{len(found.items)} items came back from {found.upstream!r} after {self.job.replica.node!r} "
                    "had finished (the loop had drained): a finish() in the loop emitted into it; a node in a loop "
                    "may emit in finish() only what does not come back round the loop")
                raise Failure(Phase.FINISH, error, found.items[0], has_item=True)

    def _send_done(self) -> None:
        self.control.send(Done(self.counters.snapshot()), self.collected if self.job.collect else None)

    def _end_checkpointed(self, operator: Operator | None) -> Failure | None:
        """The end of a replica in a run with checkpoints: done, then the final checkpoint's commit (the launcher
        takes it once every replica is done), then ``teardown()``; raises ``Stopped``."""
        self.counters.ended_at = time.time()
        self._send_done()
        try:
            while (final := self._take_checkpoints()) is None:
                self.control.receive(self.job.timeouts.stop_check_ms)
        except Stopped:
            self._teardown(operator)
            raise
        failure = self._teardown(operator)
        if failure is not None:
            _report_failure(self.control, failure, self.counters)
        else:
            self.control.send(Committed(final))
        return failure

    def _restore(self, operator: Operator) -> None:
        """Before the start barrier: the state of the checkpoint it starts from, if any; an unpicklable state
        fails here, before any item."""
        part = self.job.restore
        self.snapshots = Snapshots(self.job.node, operator, self.outputs, self.control, self.counters, self.context,
                                   part)
        self._skip = self.snapshots.skip
        self.snapshots.start(None if part is None else part.state, self.job.restored_from)

    def _serve_when_done(self) -> Callable[[], None] | None:
        """What a replica that ended still does until shutdown: resend to restarted peers."""
        return self._service if self._recoverable else None

    def _take_checkpoints(self) -> int | None:
        """Between items: apply the commits that came (a source also takes the checkpoints it was asked for);
        returns the id of the final checkpoint if its commit came."""
        snapshots = self.snapshots
        if snapshots is None:
            return None
        final = None
        for request in self.control.take_checkpoints():
            if isinstance(request, Commit):
                snapshots.commit(request.checkpoint)
                final = request.checkpoint if request.final else final
            elif self.job.node.kind is NodeKind.SOURCE and not self._source_ended:
                snapshots.barrier(request.checkpoint)
        return final

    def _between_chunks(self) -> None:
        """A source, after each chunk: a checkpoint or a commit waiting is taken now."""
        if self.control.has_checkpoints or ready_to_read(self.control.socket):
            self._take_checkpoints()

    def _wire_up(self) -> None:
        endpoints = {**self.inputs.bind(self.zmq_context), **self.outputs.bind(self.zmq_context)}
        if not self.job.wiring.is_inproc:
            bound = [*self.inputs.bound_sockets(), *self.outputs.bound_sockets()]
            self.control.send(WatchHandshakes(tuple(monitor_handshakes(socket) for socket in bound)))
        if self._recoverable:
            self.inputs.watch(self.outputs.back_sockets())
        self.control.send(Register(endpoints))
        address_book = self.control.wait_for(AddressBook).replicas
        self.outputs.connect(self.zmq_context, address_book)
        self.inputs.connect(self.zmq_context, address_book)
        self.outputs.wait_ready()

    def _generate(self, operator: Operator) -> None:
        flusher = LateFlusher(self.outputs, self.counters, self._flush_and_check)
        flusher.start()
        between = self._between_chunks if self.snapshots is not None else None
        try:
            drive_source(self._items(operator), self.outputs, self.counters, self._flush_and_check, flusher,
                         between=between)
        except (Stopped, SerializationError, Failure):
            raise
        except Exception as error:
            raise Failure(Phase.GENERATE, error) from error
        finally:
            flusher.stop()
            self._source_ended = True

    def _items(self, operator: Operator) -> Iterator[Any]:
        """What the source yields; a restarted one skips what was acknowledged (``seek(n)`` if it has one)."""
        skip = self._skip
        if skip and operator.seek is not None:
            operator.seek(skip)
            return generated(operator.generate())
        return islice(generated(operator.generate()), skip, None)

    def _process(self, operator: Operator) -> None:
        collect = self.collected.extend if self.job.collect else None
        policy = self.job.node.policy
        guard = ItemGuard(policy, operator, self.counters, self.context, self.control.pause) if policy.catches else None
        timeouts = self.job.timeouts
        idle_wait_s = timeouts.stop_check_s if self._recoverable else timeouts.idle_wait_s  # rewires come sooner
        flush, barrier = self._flush_and_check, None
        if self.snapshots is not None:
            flush, barrier = self._flush_and_commit, self.snapshots.barrier
        node = self.job.node
        if operator.asynchronous or node.concurrency > 1:
            runner: AsyncRunner | ThreadRunner
            if operator.asynchronous:
                runner = self._loop()
            else:
                runner = self._threads = ThreadRunner(self.context, node.concurrency)
            guard = guard or ItemGuard(policy, operator, self.counters, self.context, self.control.pause)
            driver = ConcurrentDriver(operator, runner, self.inputs, self.outputs, self.counters, self.context,
                                      self.control, policy, node.concurrency, node.ordered, guard)
            driver.run(flush, self._flush_idle, round(idle_wait_s * 1000), collect, barrier)
            return
        drive_node(operator, self.inputs, self.outputs, self.counters, self.context, flush,
                   self._flush_idle, round(idle_wait_s * 1000), collect, policy, guard, barrier)

    def _emit_all(self, phase: Phase, method: Callable[[], Any]) -> None:
        self.context.input = None
        started = time.monotonic()
        results = self._call(phase, lambda: list(emitted(self._resolve(method()))))
        if self.outputs.emits_items and results:
            self.outputs.emit_many(results)
            self.counters.items_out += len(results)
        self.counters.busy_s += time.monotonic() - started

    def _flush_and_check(self) -> None:
        self.outputs.flush()
        self.control.raise_if_stopped()
        if self._recoverable:
            self._service()

    def _flush_and_commit(self) -> None:
        """``_flush_and_check`` of a node in a run with checkpoints: commits that came are run too."""
        self._flush_and_check()
        self._take_checkpoints()

    def _flush_idle(self) -> None:
        """``_flush_and_check`` when nothing more came: a sink acknowledges at once (see ``Acknowledger.send``)."""
        self.outputs.flush()
        self.control.raise_if_stopped()
        if self._recoverable:
            self._service(idle=True)
        self._take_checkpoints()

    def _service(self, idle: bool = False) -> None:
        """With restarts: reconnect to restarted peers (and resend them what they lost), read acknowledgements,
        acknowledge what is done. Not re-entered: a resend that waits serves nothing more meanwhile."""
        if self._servicing:
            return
        self._servicing = True
        try:
            for rewire in self.control.take_rewires():
                endpoints = {rewire.replica: rewire.endpoints}
                self.outputs.rewire(self.zmq_context, rewire.replica, rewire.incarnation, endpoints)
                self.inputs.rewire(self.zmq_context, rewire.replica, rewire.incarnation, endpoints)
            self.outputs.read_back()
            acked = self.outputs.acked_prefixes()
            self.inputs.acks.send(acked, idle)
            counters = self.counters
            counters.replayed = self.outputs.replayed
            if self.job.node.kind is NodeKind.SOURCE:
                counters.acked = self.job.skip + min(acked, default=counters.items_out)
        finally:
            self._servicing = False

    def _call(self, phase: Phase, function: Callable[..., T], *args: Any) -> T:
        try:
            return self._resolve(function(*args))  # type: ignore[no-any-return]
        except Stopped:
            raise
        except Exception as error:
            raise Failure(phase, error) from error

    def _teardown(self, operator: Operator | None) -> Failure | None:
        if operator is None:
            return None
        try:
            self._resolve(operator.teardown())
        except Stopped:
            return None
        except Exception as error:
            log.error("%s: teardown() failed: %r", self.job.replica.id, error)
            return Failure(Phase.TEARDOWN, error)
        return None


async def _collected(generator: Any) -> list[Any]:
    return [item async for item in generator]


def _report_failure(control: ControlPipe, failure: Failure, counters: Counters) -> None:
    control.send(Failed(phase=failure.phase, message=failure.message, traceback=user_traceback(failure.error),
                        item=failure.item_repr, stats=counters.snapshot(), fatal=failure.fatal))
