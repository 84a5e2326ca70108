"""What backends that reach other machines share: placement, and restarting a replica whose host was lost.

A subclass says how a host is reached (``_reach``: the command that starts
its template and where its workers find the launcher) and whether a host
that runs nothing yet can take a replica (``_usable``).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

from ..errors import HostError
from ..model.hosts import LOCALHOST, Host
from ..model.plan import Plan, ReplicaPlan
from ..settings import Timeouts
from .base import RunConfig, Site
from .processes import ProcessBackend, Transport


class RemoteBackend(ProcessBackend):
    """Workers on the plan's hosts, one template per host; every socket CURVE."""

    control_bind = "tcp://0.0.0.0"

    def __init__(self, plan: Plan, timeouts: Timeouts) -> None:
        super().__init__()
        self._plan = plan
        self.heartbeat_timeout_s: float | None = timeouts.remote_silence_s
        self._placement = {replica.id: replica.host for replica in plan.replicas}
        self._lost_hosts: set[str] = set()

    def start(self, replicas: Sequence[ReplicaPlan], config: RunConfig) -> None:
        """Start a template per host, and fork each replica from its host's."""
        for replica in replicas:
            self._spawn(replica, config)

    def restart(self, replica: ReplicaPlan, config: RunConfig, incarnation: int, skip: int, host_lost: bool) -> str:
        """A new worker for ``replica`` (the old one is ended if it still runs); returns its host.

        On its host, unless that host was lost: then on the host of its node
        that runs the fewest replicas and can take it. Raises ``HostError``
        when no host of its node is left.
        """
        current = self._placement[replica.id]
        if host_lost and current != LOCALHOST:
            self._lost_hosts.add(current)
        host = self._host(replica) if current in self._lost_hosts else current
        self._placement[replica.id] = host
        self._spawn(replica, config, incarnation, skip, host)
        return host

    def _host(self, replica: ReplicaPlan) -> str:
        load = collections.Counter(self._placement.values())
        candidates = sorted((host for host in self._plan.hosts_of(replica.node) if host.name not in self._lost_hosts),
                            key=lambda host: load[host.name])
        for host in candidates:
            if self._usable(host, replica):
                return host.name
            self._lost_hosts.add(host.name)
        raise HostError(f"no host left for {replica.id}: {', '.join(sorted(self._lost_hosts))} lost, and node "
                        f"{replica.node!r} runs on none else")

    def _spawn(self, replica: ReplicaPlan, config: RunConfig, incarnation: int = 0, skip: int = 0,
               on: str | None = None) -> None:
        """Fork the worker of ``replica`` from the template of host ``on`` (default: its planned host)."""
        host = self._plan.host_or_spare(on or replica.host)
        moved = host.name if host.name != replica.host else None
        transport, site = self._reach(host, config)
        self._processes.spawn(replica.id, f"{replica.id}@{host.name}", host.name, transport,
                              config.shared(site.sys_path),
                              config.for_replica(replica, site, incarnation, skip, moved), incarnation)

    def _reach(self, host: Host, config: RunConfig) -> tuple[Transport, Site]:
        """How ``host``'s template starts, and where its workers are."""
        raise NotImplementedError

    def _usable(self, host: Host, replica: ReplicaPlan) -> bool:
        """Whether ``host`` can take ``replica`` now that the replica's own host is lost."""
        raise NotImplementedError
