"""``run()``: plan a topology, start its replicas, drive the run, report or fail.

A run has four phases, each its own function: ``_prepare`` (validate and
plan, pickle the code: nothing started yet), ``_open`` (probe the hosts,
then the ZeroMQ context, CURVE, the coordinator and the backend, each
closed by one ``ExitStack`` whatever happens next), ``_drive`` (start the
workers and serve the control plane until every replica is done; on a
failure or an interrupt, stop everything and attach a partial report) and
``_report``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import zmq

from ..checkpoint.compat import fingerprint
from ..checkpoint.store import CheckpointStore
from ..errors import AllocationEnded, CheckpointError, HostError, RunFailed, RunInterrupted, TopologyError
from ..model.dsl import NodeKind, Topology, TopologySpec
from ..model.hosts import Host
from ..model.plan import Plan, plan_run, replica_id
from ..model.report import NodeReport, ReplicaReport, RunReport
from ..runtime.security import Curve, start_authenticator
from ..settings import BufferSettings, Timeouts
from ..wire.control import ReplicaStats
from ..wire.pickling import dump_for_workers, source_texts
from .base import Backend, RunConfig
from .checkpoints import DEFAULT_INTERVAL_S, Checkpointer
from .coordinator import Coordinator, Finished, RollBack
from .inproc import InprocBackend
from .local import LocalBackend
from .resume import SAVED, StartingPoint, hosts_parameter, saved_parameters, starting_point
from .slurm import Allocation, SlurmBackend, SlurmSettings, allocated
from .ssh import SshBackend, SshSettings
from .supervisor import Restart

log = logging.getLogger(__name__)


class Progress(Protocol):
    """A view of a run in progress (``flowgraph.cli.progress.LiveTable``, ``ProgressLines``)."""

    def update(self, live: Mapping[str, ReplicaStats], alive: set[str]) -> None: ...

    def close(self) -> None: ...


def run(
    topology: Topology | TopologySpec,
    *,
    hosts: str | Sequence[str] | None = None,
    inproc: bool = False,
    params: Mapping[str, Any] | None = None,
    hwm: int | None = None,
    buffers: BufferSettings | None = None,
    collect: Iterable[str] = (),
    log_level: int = logging.WARNING,
    ssh_config: str | None = None,
    remote_python: str | None = None,
    advertise: str | None = None,
    progress: Callable[[Plan], Progress] | None = None,
    timeouts: Timeouts | None = None,
    restarts: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_interval_s: float | None = None,
    resume: bool = False,
    slurm: bool = False,
    slurm_args: str | None = None,
) -> RunReport:
    """Run ``topology`` to its end and return a ``RunReport``.

    Every replica is a fresh local process, or with ``inproc=True`` a thread
    of this process (same wire code, for debugging). ``hosts`` (``"h1,h2"``,
    ``"@FILE"`` or a list) spreads replicas over machines through ssh (see
    ``flowgraph.model.hosts``; ``ssh_config``, ``remote_python`` and
    ``advertise`` are ``--ssh-config``, ``--remote-python`` and
    ``--advertise``). ``slurm=True`` runs on the nodes of the Slurm
    allocation this runs in, each replica forked from a job step per node;
    ``slurm_args`` (``"-N 3 -p debug"``, salloc's options) asks Slurm for an
    allocation and releases it at the end (see ``flowgraph.launch.slurm``). ``progress`` makes a view from the plan (see
    ``flowgraph.cli.progress``) that gets the replicas' counters while the
    run goes. ``params`` reach nodes as ``context().params``. ``hwm``
    overrides the high-water mark (in batches) of every data socket;
    ``buffers`` replaces the topology's batching and serializer settings (an
    edge's own still win). ``collect`` names nodes whose received items are
    returned in ``RunReport.collected`` (see ``flowgraph.testing``).
    ``timeouts`` (``flowgraph.Timeouts``) sets how long the run waits for
    what, in the launcher and in every worker. ``restarts`` lets each
    replica be restarted that many times (a node's ``restarts=`` wins):
    what it had not fully processed is delivered again, at least once.
    ``checkpoint`` (a directory) takes a checkpoint every
    ``checkpoint_interval_s`` (default 10) into it; with ``restarts``, a
    failure rolls every replica back to the last complete one (exactly
    once for class state and ``SQLiteStore`` rows). ``resume=True``
    continues the run whose checkpoints are there, with the parameters it
    was started with unless given again (``params``, ``hosts``,
    ``restarts``, ``checkpoint_interval_s``).

    Raises ``TopologyError`` before anything starts if the topology is
    invalid, ``HostError`` if a host cannot run workers; ``AllocationEnded``
    if the Slurm job ended under the run (``scancel``, its time limit); ``RunFailed``
    (node, replica, host, traceback) if a replica fails or dies, after every
    replica was stopped; ``RunInterrupted`` on Ctrl-C (KeyboardInterrupt),
    after every replica was stopped. Both carry a partial ``report``.

    >>> from flowgraph import Topology, run
    >>> topo = Topology("squares")
    >>> @topo.source
    ... def numbers():
    ...     yield from range(4)
    >>> @topo.sink(inputs=numbers)
    ... def show(n):
    ...     print(n * n)
    >>> run(topo, inproc=True, progress=None).status  # doctest: +SKIP
    'ok'
    """
    store = None if checkpoint is None else CheckpointStore(checkpoint)
    given: dict[str, Any] = {"params": dict(params) if params else None, "hosts": hosts_parameter(hosts),
                             "restarts": restarts, "checkpoint_interval_s": checkpoint_interval_s,
                             "ssh_config": ssh_config, "remote_python": remote_python, "advertise": advertise}
    if resume:
        if store is None:
            raise CheckpointError("resume=True continues the run of a checkpoint directory: give checkpoint=DIR")
        given = saved_parameters(store, given)
    settings = _RunSettings(
        hosts=given["hosts"], inproc=inproc, params=dict(given["params"] or {}), hwm=hwm, buffers=buffers,
        collect=frozenset(collect), log_level=log_level,
        ssh=SshSettings(given["ssh_config"], given["remote_python"], given["advertise"]),
        timeouts=timeouts or Timeouts(), restarts=given["restarts"] or 0,
        checkpoint_interval_s=given["checkpoint_interval_s"] or DEFAULT_INTERVAL_S,
        slurm=SlurmSettings(slurm_args, given["remote_python"], given["advertise"]) if slurm or slurm_args else None,
    )
    with contextlib.ExitStack() as stack:
        if settings.slurm is not None:
            spec, _ = _prepare(topology, settings, checkpointing=store is not None)  # before Slurm is asked
            allocation = stack.enter_context(allocated(settings.slurm, f"flowgraph-{spec.name}"))
            settings = dataclasses.replace(settings, hosts=allocation.hosts, allocation=allocation)
        spec, plan = _prepare(topology, settings, checkpointing=store is not None)
        start = StartingPoint()
        if store is not None:
            start = starting_point(store, plan, fingerprint(spec), resume)
            if start.finished:
                return _already_finished(plan, settings, store, start)
            store.save_run({**{name: given[name] for name in SAVED}, "checkpoint_interval_s":
                            settings.checkpoint_interval_s, "restarts": settings.restarts, "topology": spec.name})
        launch = _open(stack, spec, plan, settings, store, start)
        view = progress(plan) if progress is not None else None
        if view is not None:
            stack.callback(view.close)
        finished = _drive(launch, view)
    launch.ended = time.monotonic()
    return _report(plan, launch, {replica: done.stats for replica, done in finished.items()}, "ok",
                   collected=_collected(plan, finished))


@dataclass(frozen=True)
class _RunSettings:
    hosts: str | Sequence[str] | Sequence[Host] | None
    inproc: bool
    params: Mapping[str, Any]
    hwm: int | None
    buffers: BufferSettings | None
    collect: frozenset[str]
    log_level: int
    ssh: SshSettings
    timeouts: Timeouts
    restarts: int
    checkpoint_interval_s: float = DEFAULT_INTERVAL_S
    slurm: SlurmSettings | None = None
    allocation: Allocation | None = None
    """The Slurm allocation the run has (``slurm``), once it has it."""


@dataclass
class _Workers:
    """Whether replicas may still hold sockets of the launcher's ZeroMQ context (threads of an inproc run)."""

    running: bool = False

    def terminate(self, context: zmq.Context) -> None:
        """Terminate ``context``, unless replicas that could not be stopped still use it (it would hang)."""
        if not self.running:
            context.term()


@dataclass
class _Launch:
    """What ``_open`` made for a run; closed by its ``ExitStack``."""

    plan: Plan
    backend: Backend
    coordinator: Coordinator
    config: RunConfig
    workers: _Workers
    launched: float
    """``time.monotonic()`` before any worker started."""
    ended: float = 0.0
    """``time.monotonic()`` when the run ended (0 while it runs)."""


def _prepare(topology: Topology | TopologySpec, settings: _RunSettings,
             checkpointing: bool = False) -> tuple[TopologySpec, Plan]:
    """Validate and plan: raises ``TopologyError`` or ``HostError`` before anything starts."""
    spec = topology.spec() if isinstance(topology, Topology) else topology
    if isinstance(settings.restarts, bool) or not isinstance(settings.restarts, int) or settings.restarts < 0:
        raise TopologyError(f"restarts={settings.restarts!r}; it must be an integer >= 0")
    interval = settings.checkpoint_interval_s
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
        raise TopologyError(f"checkpoint_interval_s={interval!r}; it must be a number of seconds > 0")
    plan = plan_run(spec, hosts=settings.hosts, buffers=settings.buffers, hwm=settings.hwm,
                    restarts=settings.restarts, checkpointing=checkpointing)
    unknown = sorted(settings.collect - {node.name for node in plan.nodes})
    if unknown:
        raise TopologyError(f"cannot collect from {', '.join(map(repr, unknown))}: "
                            f"no such node in topology {spec.name!r}")
    if settings.inproc and not plan.is_local:
        raise HostError("--inproc runs every replica as a thread of this process; it cannot use other hosts")
    if settings.slurm is not None and (settings.inproc or (settings.hosts and settings.allocation is None)):
        raise HostError("--slurm runs on the nodes of a Slurm allocation; it cannot be combined with "
                        f"{'--inproc' if settings.inproc else '--hosts'}")
    return spec, plan


def _open(stack: contextlib.ExitStack, spec: TopologySpec, plan: Plan, settings: _RunSettings,
          store: CheckpointStore | None = None, start: StartingPoint | None = None) -> _Launch:
    """Probe the hosts (``HostError`` before anything starts), then make what drives the run, closed by ``stack``."""
    timeouts = settings.timeouts
    plan_blob, node_blobs = dump_for_workers(spec, plan)
    hosts_backend: Backend | None = None
    if settings.allocation is not None and settings.slurm is not None:
        hosts_backend = SlurmBackend(plan, settings.allocation, settings.slurm, timeouts)
    elif not plan.is_local:
        hosts_backend = SshBackend(plan, settings.ssh, timeouts)
    if hosts_backend is not None:
        stack.callback(hosts_backend.close)
    workers = _Workers()
    context = zmq.Context()
    stack.callback(workers.terminate, context)
    curve = None if plan.is_local else Curve.generate()
    if curve is not None:
        stack.callback(start_authenticator(context, curve).stop)
    backend: Backend
    if settings.inproc:
        backend = InprocBackend(context)
        stack.callback(backend.close)
    else:
        backend = hosts_backend or LocalBackend(timeouts)
        if hosts_backend is None:
            stack.callback(backend.close)
    token = secrets.token_bytes(16)
    checkpointer = None if store is None else Checkpointer(store, plan, fingerprint(spec),
                                                             settings.checkpoint_interval_s)
    coordinator = Coordinator(context, plan, token, backend, timeouts, curve, checkpointer)
    stack.callback(coordinator.close)
    start = start or StartingPoint()
    config = RunConfig(
        token=token, control=coordinator.endpoint, plan=plan_blob, nodes=node_blobs, timeouts=timeouts,
        params=settings.params, collect=settings.collect, log_level=settings.log_level, curve=curve,
        sources=source_texts(spec), checkpointing=store is not None, restore=start.parts,
        restored_from=start.checkpoint,
    )
    coordinator.on_restart = functools.partial(_restart, plan, backend, config, coordinator)
    return _Launch(plan, backend, coordinator, config, workers, time.monotonic())


def _restart(plan: Plan, backend: Backend, config: RunConfig, coordinator: Coordinator, decision: Restart) -> str:
    """Start the new incarnation of a lost replica; a source skips what its last heartbeat says was acknowledged.

    Returns the host it runs on now.
    """
    replica = plan.replica_by_id(decision.replica)
    stats = coordinator.live.get(decision.replica)
    skip = stats.acked if stats is not None and replica.kind is NodeKind.SOURCE else 0
    return backend.restart(replica, config, decision.incarnation, skip, decision.host_lost)


def _drive(launch: _Launch, view: Progress | None) -> dict[str, Finished]:
    """Start every worker and serve the run to its end; on a failure or an interrupt, stop everything first."""
    coordinator, backend = launch.coordinator, launch.backend
    on_tick = None if view is None else (
        lambda: view.update(coordinator.live, set(coordinator.live) - coordinator.ended))
    workers = launch.workers
    try:
        workers.running = True
        backend.start(launch.plan.replicas, launch.config)
        while True:
            try:
                finished = coordinator.serve(on_tick=on_tick)
                break
            except RollBack as rollback:
                _roll_back(launch, rollback.decision)
        workers.running = not backend.wait(launch.config.timeouts.shutdown_s)
        if workers.running:
            log.warning("some replicas did not exit after shutdown; killing them")
            backend.kill()
        return finished
    except CheckpointError:
        workers.running = not coordinator.stop("a checkpoint cannot be taken")
        raise
    except AllocationEnded as ended:
        workers.running = not coordinator.stop(str(ended))
        ended.report = _partial_report(launch, "failed", None)
        raise
    except RunFailed as failure:
        workers.running = not coordinator.stop(f"{failure.node}/{failure.replica} failed")
        failure.report = _partial_report(launch, "failed", failure)
        _raise_if_ended(launch, failure)
        raise
    except (RunInterrupted, KeyboardInterrupt) as caught:
        workers.running = not coordinator.stop("interrupted")
        interrupted = caught if isinstance(caught, RunInterrupted) else RunInterrupted(signal.SIGINT)
        interrupted.report = _partial_report(launch, "interrupted", None)
        _raise_if_ended(launch, interrupted)
        if interrupted is caught:
            raise
        raise interrupted from None
    except BaseException:
        workers.running = not coordinator.stop("the launcher failed")
        raise


def _raise_if_ended(launch: _Launch, caught: RunFailed | RunInterrupted) -> None:
    """A run that failed or was interrupted because its Slurm job ended (scancel) says so: ``AllocationEnded``."""
    reason = launch.backend.ended()
    if reason:
        ended = AllocationEnded(f"{reason}; every replica was stopped")
        ended.report = caught.report
        raise ended from caught


def _roll_back(launch: _Launch, decision: Restart) -> None:
    """Stop every replica and start them all again from the newest complete checkpoint (the lost one first, on
    another host if its own was lost)."""
    coordinator, plan = launch.coordinator, launch.plan
    coordinator.roll_back(decision)
    checkpointer = coordinator.checkpointer
    assert checkpointer is not None, "only a run with checkpoints rolls back"
    start = starting_point(checkpointer.store, plan, checkpointer.fingerprint, resume=True)
    launch.config = dataclasses.replace(launch.config, restore=start.parts, restored_from=start.checkpoint)
    lost = plan.replica_by_id(decision.replica)
    for replica in (lost, *(replica for replica in plan.replicas if replica.id != lost.id)):
        incarnation = coordinator.supervisor.incarnation(replica.id)
        coordinator.placement[replica.id] = launch.backend.restart(
            replica, launch.config, incarnation, 0, decision.host_lost and replica is lost)


def _already_finished(plan: Plan, settings: _RunSettings, store: CheckpointStore, start: StartingPoint) -> RunReport:
    """The report of a resumed run that had finished: nothing was started."""
    mode = "inproc" if settings.inproc else "local" if plan.is_local else "slurm" if settings.slurm else "hosts"
    log.warning("the run in %s had finished (checkpoint %d committed): nothing to do", store.directory,
                start.checkpoint)
    return RunReport(plan.topology, mode, {}, startup_s=0.0, wall_s=0.0, status="already finished",
                     guarantee=_guarantee(plan, settings.checkpoint_interval_s, store))


def _collected(plan: Plan, finished: Mapping[str, Finished]) -> dict[str, tuple[tuple[Any, ...], ...]]:
    collected = {}
    for node in plan.nodes:
        batches = [finished[r.id].collected for r in plan.replicas if r.node == node.name]
        if all(batch is not None for batch in batches):
            collected[node.name] = tuple(tuple(batch or ()) for batch in batches)
    return collected


def _partial_report(launch: _Launch, status: str, failure: RunFailed | None) -> RunReport:
    """What the replicas had done when the run stopped: their last counters (a heartbeat, or their failure)."""
    launch.ended = time.monotonic()
    errors = {} if failure is None else {replica_id(failure.node, failure.replica): str(failure.args[0])}
    return _report(launch.plan, launch, launch.coordinator.live, status, errors=errors)


def _report(plan: Plan, launch: _Launch, stats: Mapping[str, ReplicaStats], status: str, *,
            collected: Mapping[str, tuple[tuple[Any, ...], ...]] | None = None,
            errors: Mapping[str, str] | None = None) -> RunReport:
    ended = launch.ended or time.monotonic()
    last_heard = launch.coordinator.last_heard_at
    supervisor = launch.coordinator.supervisor
    nodes = {}
    for node in plan.nodes:
        replicas = []
        for replica in (r for r in plan.replicas if r.node == node.name):
            counters = stats.get(replica.id, ReplicaStats())
            started_at = counters.started_at
            ended_at = counters.ended_at or (last_heard.get(replica.id, 0.0) if started_at else 0.0)
            edges = counters.edges.values()
            replicas.append(ReplicaReport(
                node=node.name,
                replica=replica.index,
                host=launch.coordinator.placement[replica.id],
                items_in=counters.items_in,
                items_out=counters.items_out,
                wall_s=max(0.0, ended_at - started_at) if started_at and ended_at else 0.0,
                busy_s=counters.busy_s,
                blocked_s=sum(edge.blocked_s for edge in edges),
                bytes_out=sum(edge.bytes for edge in edges),
                batches_out=sum(edge.batches for edge in edges),
                started_at=started_at,
                ended_at=counters.ended_at,
                error=(errors or {}).get(replica.id),
                errors=counters.errors,
                retries=counters.retries,
                skipped=counters.skipped,
                dead_lettered=counters.dead_lettered,
                restarts=len(supervisor.reasons(replica.id)),
                restarted_because=supervisor.reasons(replica.id),
                replayed=counters.replayed,
                peak_in_flight=counters.peak_in_flight,
                spilled=counters.spilled,
            ))
        nodes[node.name] = NodeReport(node.name, node.kind.value, tuple(replicas))
    started = launch.coordinator.started_at or ended
    checkpointer = launch.coordinator.checkpointer
    guarantee = (_guarantee(plan) if checkpointer is None else
                 _guarantee(plan, checkpointer.interval_s, checkpointer.store))
    return RunReport(plan.topology, launch.backend.mode, nodes, startup_s=started - launch.launched,
                     wall_s=ended - launch.launched, collected=collected or {}, status=status, guarantee=guarantee,
                     checkpoints_s=() if checkpointer is None else tuple(checkpointer.durations_s))


def _guarantee(plan: Plan, interval_s: float = 0.0, store: CheckpointStore | None = None) -> str:
    budget = max((node.restarts for node in plan.nodes), default=0)
    if store is not None:
        rollback = (f"a failure rolls back to the last one (up to {budget} times a replica)" if budget else
                    "fail fast; --resume continues from the last one")
        return (f"exactly once for class state and SQLiteStore rows, other sinks at least once (checkpoints every "
                f"{interval_s:g} s into {store.directory}; {rollback})")
    if plan.recoverable:
        return f"at least once (each replica restarted up to {budget} times)"
    return "exactly once without failures; fail fast"
