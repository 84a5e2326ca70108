"""Start every replica as a fresh local Python process (never a fork of the launcher)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..model.plan import ReplicaPlan
from ..settings import Timeouts
from .base import RunConfig, Site, local_sys_path
from .processes import ProcessBackend


def worker_command() -> list[str]:
    """How this machine starts a worker: this interpreter, ``-m flowgraph worker``."""
    return [sys.executable, "-u", "-m", "flowgraph", "worker"]


class LocalBackend(ProcessBackend):
    """Worker processes on this machine, data over TCP on 127.0.0.1 (no CURVE: nothing leaves)."""

    mode = "local"
    control_bind = "tcp://127.0.0.1"

    def __init__(self, timeouts: Timeouts) -> None:
        super().__init__()
        self.heartbeat_timeout_s: float | None = timeouts.local_silence_s

    def start(self, replicas: Sequence[ReplicaPlan], config: RunConfig) -> None:
        """Start one process per replica, then hand each its configuration.

        Configurations are written once every process is starting: a write
        larger than the pipe buffer waits for its worker to read it, and the
        others start meanwhile.
        """
        site = self._site(config)
        for replica in replicas:
            self._processes.spawn(replica.id, f"{replica.id}@{replica.host}", worker_command())
        for replica in replicas:
            self._processes.configure(replica.id, config.for_replica(replica, site))

    def restart(self, replica: ReplicaPlan, config: RunConfig, incarnation: int, skip: int, host_lost: bool) -> str:
        """A new process for ``replica`` (the old one is killed if it still runs)."""
        self._processes.spawn(replica.id, f"{replica.id}@{replica.host}", worker_command(), incarnation=incarnation)
        self._processes.configure(replica.id, config.for_replica(replica, self._site(config), incarnation, skip))
        return replica.host

    def _site(self, config: RunConfig) -> Site:
        return Site(config.control, "tcp://127.0.0.1", None, config.timeouts.local_silence_s, local_sys_path())
