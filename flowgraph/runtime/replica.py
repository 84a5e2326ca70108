"""One replica: register → address book → setup → start barrier → items → finish → EOS → teardown.

``run_replica`` is the same in a worker process and in a thread of an
``--inproc`` run; it talks to the launcher only through its ``ControlPipe``
(the agent thread forwards) and never raises: whatever goes wrong is
reported as a ``Failed`` message carrying the phase, the traceback (user
frames only), the item being processed and the counters so far.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cloudpickle
import zmq

from ..errors import Phase, user_traceback
from ..model.dsl import NodeKind, NodeSpec
from ..model.plan import Plan, ReplicaPlan
from ..settings import Timeouts
from ..wire.control import AddressBook, Done, Failed, Heartbeat, Ready, Register, Shutdown, Start
from ..wire.pickling import remember_sources
from .config import WorkerConfig
from .context import Context, set_context
from .counters import Counters
from .edges import EdgeSetup
from .failures import Failure, SerializationError, Stopped
from .inputs import Inputs
from .node import drive_node
from .operator import Operator, emitted, generated, make_operator
from .outputs import Outputs
from .pipe import ControlPipe, WatchHandshakes
from .sockets import Wiring, monitor_handshakes
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
    params: Mapping[str, Any] = field(default_factory=dict)
    collect: bool = False
    """Record every input item and hand the list to the launcher (``flowgraph.testing``)."""


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
                     wiring=config.wiring, timeouts=config.timeouts, params=config.params, collect=config.collect)
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
        self.context = Context(replica.node, replica.index, job.node.parallelism, replica.host, job.params)
        self.inputs = Inputs(plan, replica, job.token, control, job.wiring, counters, job.timeouts.stop_check_ms)
        node_index = plan.node(replica.node).index
        self.outputs = Outputs(
            EdgeSetup(
                plan=edge, producer_node=node_index, producer=replica.index, replica_id=replica.id,
                consumer_node=plan.node(edge.downstream).index,
                connects=tuple(c for c in replica.connects if c.edge == edge.name and c.socket == "PUSH"),
                token=job.token, wiring=job.wiring, control=control, counters=counters, timeouts=job.timeouts,
            )
            for edge in plan.edges_from(replica.node)
        )
        counters.edges = {edge.plan.name: edge.stats for edge in self.outputs.edges}
        self.collected: list[Any] = []

    def run(self) -> bool:
        """The replica's whole life; its sockets are closed whatever happens (after shutdown, or on a stop)."""
        with contextlib.ExitStack() as sockets:
            sockets.callback(self.outputs.close)
            sockets.callback(self.inputs.close)
            return self._live()

    def _live(self) -> bool:
        operator: Operator | None = None
        failure: Failure | None = None
        try:
            self._wire_up()
            operator = self._call(Phase.SETUP, make_operator, self.job.node)
            self._call(Phase.SETUP, operator.setup)
            self.control.send(Ready())
            self.control.wait_for(Start)
            self.counters.started_at = time.time()
            if self.job.node.kind is NodeKind.SOURCE:
                self._generate(operator)
            else:
                self._process(operator)
            self._emit_all(Phase.FINISH, operator.finish)
            self.outputs.send_eos()
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
        failure = failure or self._teardown(operator)
        self.counters.ended_at = time.time()
        if failure is not None:
            _report_failure(self.control, failure, self.counters)
        else:
            self.control.send(Done(self.counters.snapshot()), self.collected if self.job.collect else None)
        try:
            self.control.wait_for(Shutdown)
        except Stopped:
            pass
        return failure is None

    def _wire_up(self) -> None:
        endpoints = {**self.inputs.bind(self.zmq_context), **self.outputs.bind(self.zmq_context)}
        if not self.job.wiring.is_inproc:
            bound = [*self.inputs.bound_sockets(), *self.outputs.bound_sockets()]
            self.control.send(WatchHandshakes(tuple(monitor_handshakes(socket) for socket in bound)))
        self.control.send(Register(endpoints))
        address_book = self.control.wait_for(AddressBook).replicas
        self.outputs.connect(self.zmq_context, address_book)
        self.inputs.connect(self.zmq_context, address_book)
        self.outputs.wait_ready()

    def _generate(self, operator: Operator) -> None:
        flusher = LateFlusher(self.outputs, self.counters, self._flush_and_check)
        flusher.start()
        try:
            drive_source(generated(operator.generate()), self.outputs, self.counters, self._flush_and_check,
                         flusher)
        except (Stopped, SerializationError):
            raise
        except Exception as error:
            raise Failure(Phase.GENERATE, error) from error
        finally:
            flusher.stop()

    def _process(self, operator: Operator) -> None:
        collect = self.collected.extend if self.job.collect else None
        drive_node(operator, self.inputs, self.outputs, self.counters, self.context, self._flush_and_check,
                   round(self.job.timeouts.idle_wait_s * 1000), collect)

    def _emit_all(self, phase: Phase, method: Callable[[], Any]) -> None:
        self.context.input = None
        started = time.monotonic()
        results = self._call(phase, lambda: list(emitted(method())))
        if self.outputs.edges and results:
            self.outputs.emit_many(results)
            self.counters.items_out += len(results)
        self.counters.busy_s += time.monotonic() - started

    def _flush_and_check(self) -> None:
        self.outputs.flush()
        self.control.raise_if_stopped()

    def _call(self, phase: Phase, function: Callable[..., T], *args: Any) -> T:
        try:
            return function(*args)
        except Stopped:
            raise
        except Exception as error:
            raise Failure(phase, error) from error

    def _teardown(self, operator: Operator | None) -> Failure | None:
        if operator is None:
            return None
        try:
            operator.teardown()
        except Exception as error:
            log.error("%s: teardown() failed: %r", self.job.replica.id, error)
            return Failure(Phase.TEARDOWN, error)
        return None


def _report_failure(control: ControlPipe, failure: Failure, counters: Counters) -> None:
    error = failure.error
    control.send(Failed(phase=failure.phase, message=f"{type(error).__name__}: {error}",
                        traceback=user_traceback(error), item=failure.item_repr, stats=counters.snapshot()))
