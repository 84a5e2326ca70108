"""Start every replica as a fresh local Python process (never a fork of the launcher)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..plan import ReplicaPlan
from ._processes import ProcessBackend
from .base import Site, WorkerConfig, local_sys_path

LAUNCHER_TIMEOUT_S = 10.0
"""A local worker also stops when the launcher is silent this long (it dies with stdin anyway)."""


def worker_command() -> list[str]:
    """How this machine starts a worker: this interpreter, ``-m flowgraph worker``."""
    return [sys.executable, "-u", "-m", "flowgraph", "worker"]


class LocalBackend(ProcessBackend):
    """Worker processes on this machine, data over TCP on 127.0.0.1 (no CURVE: nothing leaves)."""

    mode = "local"
    control_bind = "tcp://127.0.0.1"
    heartbeat_timeout_s: float | None = 10.0

    def start(self, replicas: Sequence[ReplicaPlan], config: WorkerConfig) -> None:
        """Start one process per replica, then hand each its configuration.

        Configurations are written once every process is starting: a write
        larger than the pipe buffer waits for its worker to read it, and the
        others start meanwhile.
        """
        site = Site(config.control, "tcp://127.0.0.1", None, LAUNCHER_TIMEOUT_S, local_sys_path())
        for replica in replicas:
            self._processes.spawn(replica.id, f"{replica.id}@{replica.host}", worker_command())
        for replica in replicas:
            self._processes.configure(replica.id, config.for_replica(replica, site))
