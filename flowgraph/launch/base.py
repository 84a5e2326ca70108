"""What every launch backend provides, and the per-run configuration workers are started from."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..model.plan import ReplicaPlan
from ..runtime.config import WorkerConfig
from ..runtime.forkserver import Shared
from ..runtime.security import Curve
from ..runtime.sockets import Wiring
from ..settings import Timeouts


@dataclass(frozen=True)
class Exit:
    """A replica's process or thread ended."""

    replica: str
    description: str
    """e.g. ``exited with status 1`` or ``killed by SIGKILL``."""
    clean: bool
    signal_name: str | None = None
    stderr_tail: str = ""
    """The last lines it wrote to stderr, for errors that happen before it can report."""
    incarnation: int = 0
    """Which start of the replica ended."""
    host_lost: bool = False
    """Its host could not be reached any more (ssh lost the connection)."""


@dataclass(frozen=True)
class Site:
    """Where one worker runs, as the worker sees it."""

    control: str
    """The launcher's control endpoint, reachable from the worker."""
    bind_base: str
    """Where data sockets bind: ``tcp://127.0.0.1``, ``tcp://0.0.0.0`` or ``inproc://...``."""
    advertise: str | None
    """The address other replicas use to reach this worker's sockets (None: as bound)."""
    silence_s: float
    """The worker stops when the launcher is silent this long."""
    sys_path: tuple[str, ...] = ()
    """The launcher's sys.path, for workers on this machine."""


@dataclass(frozen=True)
class RunConfig:
    """The per-run part of every worker's configuration; ``for_replica`` adds the replica's own."""

    token: bytes
    control: str
    """The control endpoint as bound by the launcher (backends derive each site's from it)."""
    plan: bytes
    """cloudpickle of the plan."""
    nodes: Mapping[str, bytes]
    """cloudpickle of each node's spec, by node name."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    params: Mapping[str, Any] = field(default_factory=dict)
    collect: frozenset[str] = frozenset()
    log_level: int = logging.WARNING
    curve: Curve | None = None
    """The run's CURVE keys when it leaves this machine; None for local runs."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """The text of the user's source files, for tracebacks on every host."""
    checkpointing: bool = False
    restore: Mapping[str, Any] = field(default_factory=dict)
    """Each replica's part (``checkpoint.store.Part``) of the checkpoint the run starts from, by replica id."""
    restored_from: int = 0
    """The id of that checkpoint (0: the run starts from the beginning)."""

    def shared(self, sys_path: tuple[str, ...] = ()) -> Shared:
        """What every replica's configuration holds alike, sent to each host's template once."""
        return Shared(self.plan, self.nodes, self.sources, sys_path)

    @property
    def control_port(self) -> str:
        return self.control.rsplit(":", 1)[1]

    def for_replica(self, replica: ReplicaPlan, site: Site, incarnation: int = 0, skip: int = 0,
                    host: str | None = None) -> WorkerConfig:
        """The configuration of one worker (of a restarted replica: its incarnation, what a source skips, its host)."""
        return WorkerConfig(
            token=self.token,
            control=site.control,
            node=replica.node,
            index=replica.index,
            plan=self.plan,
            code=self.nodes[replica.node],
            wiring=Wiring(site.bind_base, site.advertise, self.curve),
            timeouts=self.timeouts,
            silence_s=site.silence_s,
            params=dict(self.params),
            collect=replica.node in self.collect,
            log_level=self.log_level,
            sys_path=site.sys_path,
            sources=self.sources,
            incarnation=incarnation,
            skip=skip,
            host=host,
            checkpointing=self.checkpointing,
            restore=self.restore.get(replica.id),
            restored_from=self.restored_from,
        )


def local_sys_path() -> tuple[str, ...]:
    """The launcher's import path, handed to workers on this machine."""
    return tuple(path for path in sys.path if path)


class Backend(Protocol):
    """Starts workers for a plan and tells when they end; nothing else."""

    mode: str
    control_bind: str
    heartbeat_timeout_s: float | None
    """Fail a replica whose heartbeat is missing this long; None: never (threads)."""

    def start(self, replicas: Sequence[ReplicaPlan], config: RunConfig) -> None: ...

    def restart(self, replica: ReplicaPlan, config: RunConfig, incarnation: int, skip: int, host_lost: bool) -> str:
        """Start ``replica`` again as ``incarnation`` (ending the replaced one if it still runs); returns its host.

        ``host_lost``: its host is gone (a lost ssh connection, missed
        heartbeats); a backend that can, starts it on another of its node's hosts.
        """

    def exits(self) -> list[Exit]: ...

    def ended(self) -> str | None:
        """Why nothing can run any more (a cancelled Slurm job), or None."""

    def wait(self, timeout_s: float) -> bool: ...

    def kill(self) -> None: ...

    def close(self) -> None: ...
