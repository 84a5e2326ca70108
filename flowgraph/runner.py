"""``run()``: plan a topology, start its replicas, drive the run, report or fail."""

from __future__ import annotations

import logging
import secrets
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import zmq

from ._pickling import dump_for_workers
from .control import Coordinator
from .dsl import Topology, TopologySpec
from .errors import HostError, RunFailed, RunInterrupted, TopologyError
from .launch.base import Backend, WorkerConfig
from .launch.inproc import InprocBackend
from .launch.local import LocalBackend
from .launch.ssh import SshBackend, SshSettings
from .plan import Plan, plan_run, replica_id
from .settings import BufferSettings
from .security import Curve, start_authenticator
from .report import NodeReport, ReplicaReport, RunReport

log = logging.getLogger(__name__)

STOP_GRACE_S = 2.0
"""After a failure or interrupt, replicas get this long to stop before they are killed."""
SHUTDOWN_TIMEOUT_S = 10.0


class Progress(Protocol):
    """A view of a run in progress (``flowgraph.progress.LiveTable``, ``ProgressLines``)."""

    def update(self, live: Mapping[str, Mapping[str, Any]], alive: set[str]) -> None: ...

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
) -> RunReport:
    """Run ``topology`` to its end and return a ``RunReport``.

    Every replica is a fresh local process, or with ``inproc=True`` a thread
    of this process (same wire code, for debugging). ``hosts`` (``"h1,h2"``,
    ``"@FILE"`` or a list) spreads replicas over machines through ssh (see
    ``flowgraph.hosts``; ``ssh_config``, ``remote_python`` and ``advertise``
    are ``--ssh-config``, ``--remote-python`` and ``--advertise``).
    ``progress`` makes a view from the plan (see ``flowgraph.progress``)
    that gets the replicas' counters while the run goes. ``params`` reach nodes
    as ``context().params``. ``hwm`` overrides the high-water mark (in
    batches) of every data socket; ``buffers`` replaces the topology's
    batching and serializer settings (an edge's own still win).
    ``collect`` names nodes whose received items are returned in
    ``RunReport.collected`` (see ``flowgraph.testing``).

    Raises ``TopologyError`` before anything starts if the topology is
    invalid, ``HostError`` if a host cannot run workers; ``RunFailed`` (node, replica, host, traceback) if a replica
    fails or dies, after every replica was stopped; ``RunInterrupted`` on
    Ctrl-C (KeyboardInterrupt), after every replica was stopped.

    >>> from flowgraph import Topology, run
    >>> topo = Topology("squares")
    >>> @topo.source
    ... def numbers():
    ...     yield from range(4)
    >>> @topo.sink(inputs=numbers)
    ... def show(n):
    ...     print(n * n)
    >>> report = run(topo, inproc=True)  # doctest: +SKIP
    """
    spec = topology.spec() if isinstance(topology, Topology) else topology
    plan = plan_run(spec, hosts=hosts, buffers=buffers, hwm=hwm)
    collect = frozenset(collect)
    unknown = sorted(collect - {node.name for node in plan.nodes})
    if unknown:
        raise TopologyError(f"cannot collect from {', '.join(map(repr, unknown))}: "
                            f"no such node in topology {spec.name!r}")
    if inproc and not plan.is_local:
        raise HostError("--inproc runs every replica as a thread of this process; it cannot use other hosts")
    plan_blob, node_blobs = dump_for_workers(spec, plan)
    # Hosts are probed (HostError) before anything starts.
    hosts_backend = None if plan.is_local else SshBackend(plan, SshSettings(ssh_config, remote_python, advertise))
    context = zmq.Context()
    backend: Backend = InprocBackend(context) if inproc else hosts_backend or LocalBackend()
    curve = None if plan.is_local else Curve.generate()
    authenticator = start_authenticator(context, curve) if curve is not None else None
    token = secrets.token_bytes(16)
    coordinator = Coordinator(context, plan, token, backend, curve)
    config = WorkerConfig(
        token=token,
        control=coordinator.endpoint,
        plan=plan_blob,
        nodes=node_blobs,
        params=dict(params or {}),
        collect=collect,
        log_level=log_level,
        curve=curve,
    )
    launched = time.monotonic()
    all_exited = False
    view = progress(plan) if progress is not None else None
    on_tick = None if view is None else (
        lambda: view.update(coordinator.live, set(coordinator.live) - coordinator.ended))
    try:
        backend.start(plan.replicas, config)
        done = coordinator.serve(on_tick=on_tick)
        all_exited = backend.wait(SHUTDOWN_TIMEOUT_S)
        if not all_exited:
            log.warning("some replicas did not exit after shutdown; killing them")
            backend.kill()
    except RunFailed as failure:
        all_exited = _stop_all(coordinator, backend, f"{failure.node}/{failure.replica} failed")
        failure.report = _partial_report(plan, backend.mode, coordinator, launched, failure)
        raise
    except (RunInterrupted, KeyboardInterrupt) as caught:
        all_exited = _stop_all(coordinator, backend, "interrupted")
        interrupted = caught if isinstance(caught, RunInterrupted) else RunInterrupted(signal.SIGINT)
        interrupted.report = _partial_report(plan, backend.mode, coordinator, launched, None)
        if interrupted is caught:
            raise
        raise interrupted from None
    except BaseException:
        all_exited = _stop_all(coordinator, backend, "the launcher failed")
        raise
    finally:
        coordinator.close()
        backend.close()
        if view is not None:
            view.close()
        if authenticator is not None:
            authenticator.stop()
        if all_exited:
            context.term()
    ended = time.monotonic()
    collected = {}
    for node in plan.nodes:
        batches = [done[r.id].collected for r in plan.replicas if r.node == node.name]
        if all(batch is not None for batch in batches):
            collected[node.name] = tuple(tuple(batch or ()) for batch in batches)
    return _report(plan, backend.mode, {replica: d.stats for replica, d in done.items()}, launched,
                   coordinator.started_at or ended, ended, collected=collected)


def _stop_all(coordinator: Coordinator, backend: Backend, reason: str) -> bool:
    """Ask every replica to stop, kill what is left after ``STOP_GRACE_S``; True if all ended."""
    coordinator.stop(reason)
    if backend.wait(STOP_GRACE_S):
        return True
    backend.kill()
    return backend.wait(STOP_GRACE_S)


def _partial_report(plan: Plan, mode: str, coordinator: Coordinator, launched: float,
                    failure: RunFailed | None) -> RunReport:
    """What the replicas had done when the run stopped, from their last heartbeats."""
    ended = time.monotonic()
    errors = {} if failure is None else {replica_id(failure.node, failure.replica): str(failure.args[0])}
    return _report(plan, mode, coordinator.live, launched, coordinator.started_at or ended, ended, errors=errors)


def _report(plan: Plan, mode: str, stats: Mapping[str, Mapping[str, Any]], launched: float, started: float,
            ended: float, *, collected: Mapping[str, tuple[tuple[Any, ...], ...]] | None = None,
            errors: Mapping[str, str] | None = None) -> RunReport:
    nodes = {}
    for node in plan.nodes:
        replicas = []
        for replica in (r for r in plan.replicas if r.node == node.name):
            counters = stats.get(replica.id, {})
            edges = counters.get("edges", {}).values()
            started_at = counters.get("started_at", 0.0)
            ended_at = counters.get("ended_at", 0.0)
            replicas.append(ReplicaReport(
                node=node.name,
                replica=replica.index,
                host=replica.host,
                items_in=counters.get("items_in", 0),
                items_out=counters.get("items_out", 0),
                wall_s=max(0.0, ended_at - started_at) if started_at and ended_at else 0.0,
                busy_s=counters.get("busy_s", 0.0),
                blocked_s=sum(edge["blocked_s"] for edge in edges),
                bytes_out=sum(edge["bytes"] for edge in edges),
                batches_out=sum(edge["batches"] for edge in edges),
                started_at=started_at,
                ended_at=ended_at,
                error=(errors or {}).get(replica.id),
            ))
        nodes[node.name] = NodeReport(node.name, node.kind.value, tuple(replicas))
    return RunReport(plan.topology, mode, nodes, startup_s=started - launched, wall_s=ended - launched,
                     collected=collected or {})
