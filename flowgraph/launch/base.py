"""What every launch backend provides, and the configuration a worker is started with."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..plan import ReplicaPlan


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


@dataclass(frozen=True)
class WorkerConfig:
    """The per-run part of a worker's configuration."""

    token: bytes
    control: str
    plan: bytes
    """cloudpickle of the plan."""
    nodes: Mapping[str, bytes]
    """cloudpickle of each node's spec, by node name."""
    bind_base: str
    params: Mapping[str, Any] = field(default_factory=dict)
    collect: frozenset[str] = frozenset()
    log_level: int = logging.WARNING

    def for_replica(self, replica: ReplicaPlan, launcher_timeout_s: float) -> dict[str, Any]:
        """The configuration of one worker process, as plain data."""
        return {
            "token": self.token,
            "control": self.control,
            "plan": self.plan,
            "node": self.nodes[replica.node],
            "bind_base": self.bind_base,
            "params": dict(self.params),
            "collect": replica.node in self.collect,
            "log_level": self.log_level,
            "replica": (replica.node, replica.index),
            "sys_path": [path for path in sys.path if path],
            "launcher_timeout_s": launcher_timeout_s,
        }


class Backend(Protocol):
    """Starts workers for a plan and tells when they end; nothing else."""

    mode: str
    control_bind: str
    data_bind: str
    heartbeat_timeout_s: float | None
    """Fail a replica whose heartbeat is missing this long; None: never (threads)."""

    def start(self, replicas: Sequence[ReplicaPlan], config: WorkerConfig) -> None: ...

    def exits(self) -> list[Exit]: ...

    def wait(self, timeout_s: float) -> bool: ...

    def kill(self) -> None: ...

    def close(self) -> None: ...
