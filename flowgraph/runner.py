"""``run()``: plan a topology, start its replicas, drive the run, report or fail."""

from __future__ import annotations

import logging
import secrets
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import zmq

from ._pickling import dump_for_workers
from .control import Coordinator, Done
from .dsl import Topology, TopologySpec
from .errors import HostError, RunFailed, RunInterrupted, TopologyError
from .launch.base import Backend, WorkerConfig
from .launch.inproc import InprocBackend
from .launch.local import LocalBackend
from .launch.ssh import SshBackend, SshSettings
from .plan import BufferSettings, Plan, plan_run
from .security import Curve, start_authenticator
from .report import NodeReport, ReplicaReport, RunReport

log = logging.getLogger(__name__)

STOP_GRACE_S = 2.0
"""After a failure or interrupt, replicas get this long to stop before they are killed."""
SHUTDOWN_TIMEOUT_S = 10.0


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
) -> RunReport:
    """Run ``topology`` to its end and return a ``RunReport``.

    Every replica is a fresh local process, or with ``inproc=True`` a thread
    of this process (same wire code, for debugging). ``hosts`` (``"h1,h2"``,
    ``"@FILE"`` or a list) spreads replicas over machines through ssh (see
    ``flowgraph.hosts``; ``ssh_config``, ``remote_python`` and ``advertise``
    are ``--ssh-config``, ``--remote-python`` and ``--advertise``). ``params`` reach nodes
    as ``context().params``. ``hwm`` overrides the high-water mark (in
    batches) of every data socket; ``buffers`` sets all buffer settings.
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
    if hwm is not None:
        buffers = BufferSettings(**{**vars(buffers or BufferSettings()), "hwm": hwm})
    plan = plan_run(spec, hosts=hosts, buffers=buffers)
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
    try:
        backend.start(plan.replicas, config)
        done = coordinator.serve()
        all_exited = backend.wait(SHUTDOWN_TIMEOUT_S)
        if not all_exited:
            log.warning("some replicas did not exit after shutdown; killing them")
            backend.kill()
    except RunFailed as failure:
        all_exited = _stop_all(coordinator, backend, f"{failure.node}/{failure.replica} failed")
        raise
    except RunInterrupted:
        all_exited = _stop_all(coordinator, backend, "interrupted")
        raise
    except KeyboardInterrupt:
        all_exited = _stop_all(coordinator, backend, "interrupted")
        raise RunInterrupted(signal.SIGINT) from None
    except BaseException:
        all_exited = _stop_all(coordinator, backend, "the launcher failed")
        raise
    finally:
        coordinator.close()
        backend.close()
        if authenticator is not None:
            authenticator.stop()
        if all_exited:
            context.term()
    ended = time.monotonic()
    return _report(plan, backend.mode, done, launched, coordinator.started_at or ended, ended)


def _stop_all(coordinator: Coordinator, backend: Backend, reason: str) -> bool:
    """Ask every replica to stop, kill what is left after ``STOP_GRACE_S``; True if all ended."""
    coordinator.stop(reason)
    if backend.wait(STOP_GRACE_S):
        return True
    backend.kill()
    return backend.wait(STOP_GRACE_S)


def _report(plan: Plan, mode: str, done: Mapping[str, Done], launched: float, started: float,
            ended: float) -> RunReport:
    nodes = {}
    collected = {}
    for node in plan.nodes:
        replicas = []
        for replica in (r for r in plan.replicas if r.node == node.name):
            stats = done[replica.id].stats
            edges = stats["edges"].values()
            replicas.append(ReplicaReport(
                node=node.name,
                replica=replica.index,
                host=replica.host,
                items_in=stats["items_in"],
                items_out=stats["items_out"],
                wall_s=max(0.0, stats["ended_at"] - stats["started_at"]),
                blocked_s=sum(edge["blocked_s"] for edge in edges),
                bytes_out=sum(edge["bytes"] for edge in edges),
            ))
        nodes[node.name] = NodeReport(node.name, node.kind.value, tuple(replicas))
        batches = [done[r.id].collected for r in plan.replicas if r.node == node.name]
        if all(batch is not None for batch in batches):
            collected[node.name] = tuple(tuple(batch or ()) for batch in batches)
    return RunReport(plan.topology, mode, nodes, startup_s=started - launched, wall_s=ended - launched,
                     collected=collected)
