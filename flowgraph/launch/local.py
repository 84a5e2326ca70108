"""Replicas on this machine: forked from one template process (never a fork of the launcher)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..model.hosts import LOCALHOST
from ..model.plan import ReplicaPlan
from ..settings import Timeouts
from .base import RunConfig, Site, local_sys_path
from .processes import ProcessBackend, Transport, describe_forkserver


def forkserver_command() -> list[str]:
    """How this machine starts a template: this interpreter, ``-m flowgraph forkserver``."""
    return [sys.executable, "-u", "-m", "flowgraph", "forkserver"]


LOCAL = Transport(forkserver_command(), describe_forkserver)


class LocalBackend(ProcessBackend):
    """Worker processes on this machine, data over TCP on 127.0.0.1 (no CURVE: nothing leaves)."""

    mode = "local"
    control_bind = "tcp://127.0.0.1"

    def __init__(self, timeouts: Timeouts) -> None:
        super().__init__()
        self.heartbeat_timeout_s: float | None = timeouts.local_silence_s

    def start(self, replicas: Sequence[ReplicaPlan], config: RunConfig) -> None:
        """Fork one process per replica from this machine's template."""
        for replica in replicas:
            self._spawn(replica, config)

    def restart(self, replica: ReplicaPlan, config: RunConfig, incarnation: int, skip: int, host_lost: bool) -> str:
        """A new process for ``replica`` (the old one is killed if it still runs)."""
        self._spawn(replica, config, incarnation, skip)
        return replica.host

    def _spawn(self, replica: ReplicaPlan, config: RunConfig, incarnation: int = 0, skip: int = 0) -> None:
        site = Site(config.control, "tcp://127.0.0.1", None, config.timeouts.local_silence_s, local_sys_path())
        self._processes.spawn(replica.id, f"{replica.id}@{replica.host}", LOCALHOST, LOCAL,
                              config.shared(site.sys_path), config.for_replica(replica, site, incarnation, skip),
                              incarnation)
