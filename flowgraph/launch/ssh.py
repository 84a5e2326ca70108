"""Start replicas on other machines with the system ``ssh`` client.

Before anything starts, every remote host is probed over ssh (in parallel):
it must answer within ``ConnectTimeout``, run the same Python minor version
and the same flowgraph version as the launcher (node code travels pickled).
The probe also reads ``SSH_CONNECTION`` there, which tells two addresses:
how the host reaches the launcher (the client side of the connection) and
how the launcher reached the host (the server side), which other replicas
then use to reach its data sockets. ``--advertise`` and a host's
``address=`` override them.

Each remote worker is ``ssh ... exec python -u -m flowgraph worker``: ssh
runs in BatchMode (never a password prompt; your ssh config and agent
apply), the configuration, token and CURVE keys go over ssh's stdin, and
stdout/stderr come back through ssh. When the launcher dies or kills the ssh
client, the remote worker's stdin closes and it exits; when the network is
cut, both sides notice the missing heartbeats within ``Timeouts.remote_silence_s``.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .._version import __version__
from ..errors import HostError
from ..model.hosts import LOCALHOST, Host
from ..model.plan import Plan, ReplicaPlan
from ..settings import Timeouts
from .base import RunConfig, Site, local_sys_path
from .local import worker_command
from .processes import ProcessBackend, describe_status

log = logging.getLogger(__name__)

SSH_OPTIONS = (
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=5",
    "-o", "ServerAliveInterval=1",
    "-o", "ServerAliveCountMax=3",
)
DEFAULT_PYTHON = "python3"

_PROBE = """
import json, os, sys
try:
    import flowgraph
    version = flowgraph.__version__
except ImportError:
    version = None
print(json.dumps({"flowgraph": version, "python": list(sys.version_info[:3]),
                  "ssh_connection": os.environ.get("SSH_CONNECTION", "")}))
"""


@dataclass(frozen=True)
class SshSettings:
    """How to reach the hosts: ``--ssh-config``, ``--remote-python``, ``--advertise``."""

    ssh_config: str | None = None
    remote_python: str | None = None
    advertise: str | None = None
    """The address hosts use to reach the launcher (default: as each host's ssh connection saw it)."""


@dataclass(frozen=True)
class HostInfo:
    """What the probe learned about one host."""

    host: Host
    python: str
    launcher_address: str
    """The address this host reaches the launcher at."""
    address: str
    """The address other replicas reach this host's data sockets at."""


def ssh_command(host: Host, settings: SshSettings, remote_command: str) -> list[str]:
    """The ssh command line that runs ``remote_command`` on ``host``."""
    command = ["ssh"]
    if settings.ssh_config:
        command += ["-F", settings.ssh_config]
    command += SSH_OPTIONS
    if host.port is not None:
        command += ["-p", str(host.port)]
    return [*command, host.destination, remote_command]


def probe_hosts(hosts: Iterable[Host], settings: SshSettings, timeout_s: float) -> dict[str, HostInfo]:
    """Probe every host in parallel; raises one ``HostError`` listing every host that cannot run workers."""
    hosts = list(hosts)
    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        results = list(pool.map(lambda host: _probe(host, settings, timeout_s), hosts))
    errors = [result for result in results if isinstance(result, str)]
    if errors:
        raise HostError("\n".join(errors))
    return {info.host.name: info for info in results if isinstance(info, HostInfo)}


def _probe(host: Host, settings: SshSettings, timeout_s: float) -> HostInfo | str:
    python = host.python or settings.remote_python or DEFAULT_PYTHON
    command = ssh_command(host, settings, f"exec {shlex.quote(python)} -c {shlex.quote(_PROBE)}")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"host {host.name!r} did not answer over ssh within {timeout_s:g} s"
    said = _last_line(result.stderr)
    if result.returncode == 255:
        return f"cannot reach host {host.name!r} over ssh: {said}"
    if result.returncode == 127:
        return (f"host {host.name!r} has no Python at {python!r} ({said}); "
                "name one with --remote-python or python= in the hosts file")
    try:
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"host {host.name!r} gave no answer to the probe with {python!r} (exit {result.returncode}): {said}"
    return _judge(host, python, answer, settings)


def _judge(host: Host, python: str, answer: dict, settings: SshSettings) -> HostInfo | str:
    mine = ".".join(map(str, sys.version_info[:2]))
    theirs = ".".join(map(str, answer["python"][:2]))
    if theirs != mine:
        return (f"host {host.name!r} runs Python {theirs} at {python!r}, the launcher runs {mine}: "
                "node code travels pickled and needs the same Python version")
    if answer["flowgraph"] is None:
        return (f"host {host.name!r} has no flowgraph for {python!r} (the launcher has {__version__}); "
                f"install flowgraph {__version__} there")
    if answer["flowgraph"] != __version__:
        return (f"host {host.name!r} has flowgraph {answer['flowgraph']} for {python!r}, the launcher has "
                f"{__version__}; install flowgraph {__version__} there")
    connection = answer["ssh_connection"].split()
    if len(connection) != 4 and not (settings.advertise and host.address):
        return (f"host {host.name!r} does not say how it was reached (no SSH_CONNECTION); "
                "give --advertise and address= for it in a hosts file")
    return HostInfo(
        host=host,
        python=python,
        launcher_address=settings.advertise or connection[0],
        address=host.address or connection[2],
    )


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


class SshBackend(ProcessBackend):
    """Workers on remote hosts through ssh, and on this machine for ``localhost``; all CURVE."""

    mode = "hosts"
    control_bind = "tcp://0.0.0.0"

    def __init__(self, plan: Plan, settings: SshSettings, timeouts: Timeouts) -> None:
        """Probe every remote host of ``plan``; raises ``HostError`` before anything starts."""
        self._plan = plan
        self._settings = settings
        self._probe_s = timeouts.probe_s
        self._infos = probe_hosts((host for host in plan.hosts if not host.is_local), settings, timeouts.probe_s)
        self._launcher_address = settings.advertise or next(iter(self._infos.values())).launcher_address
        self.heartbeat_timeout_s: float | None = timeouts.remote_silence_s
        self._placement = {replica.id: replica.host for replica in plan.replicas}
        self._lost_hosts: set[str] = set()
        super().__init__()

    def start(self, replicas: Sequence[ReplicaPlan], config: RunConfig) -> None:
        """Start a worker per replica (ssh for remote ones), then hand each its configuration."""
        sites = {replica.id: self._spawn(replica, config) for replica in replicas}
        for replica in replicas:
            self._processes.configure(replica.id, config.for_replica(replica, sites[replica.id]))

    def restart(self, replica: ReplicaPlan, config: RunConfig, incarnation: int, skip: int, host_lost: bool) -> str:
        """A new worker for ``replica`` (the old one is ended if it still runs); returns its host.

        On its host, unless that host was lost: then on the host of its node
        that runs the fewest replicas, probed first if it runs none yet.
        Raises ``HostError`` when no host of its node is left.
        """
        current = self._placement[replica.id]
        if host_lost and current != LOCALHOST:
            self._lost_hosts.add(current)
        host = self._host(replica) if current in self._lost_hosts else current
        self._placement[replica.id] = host
        site = self._spawn(replica, config, incarnation, host)
        moved = host if host != replica.host else None
        self._processes.configure(replica.id, config.for_replica(replica, site, incarnation, skip, moved))
        return host

    def _host(self, replica: ReplicaPlan) -> str:
        """The host to start ``replica`` on when its own is lost: of its node's, the least loaded that answers."""
        load = collections.Counter(self._placement.values())
        candidates = sorted((host for host in self._plan.hosts_of(replica.node) if host.name not in self._lost_hosts),
                            key=lambda host: load[host.name])
        for host in candidates:
            if host.is_local or host.name in self._infos:
                return host.name
            try:
                self._infos.update(probe_hosts([host], self._settings, self._probe_s))
            except HostError as error:
                log.warning("%s cannot take %s: %s", host.name, replica.id, error)
                self._lost_hosts.add(host.name)
                continue
            return host.name
        raise HostError(f"no host left for {replica.id}: {', '.join(sorted(self._lost_hosts))} lost, and node "
                        f"{replica.node!r} runs on none else")

    def _spawn(self, replica: ReplicaPlan, config: RunConfig, incarnation: int = 0, on: str | None = None) -> Site:
        """Start the worker of ``replica`` (ssh for a remote one) on host ``on`` (default: its planned host).

        Returns where it is, as it sees it.
        """
        port = config.control_port
        silence_s = config.timeouts.remote_silence_s
        host = self._plan.host_or_spare(on or replica.host)
        label = f"{replica.id}@{host.name}"
        if host.is_local:
            self._processes.spawn(replica.id, label, worker_command(), incarnation=incarnation)
            return Site(f"tcp://127.0.0.1:{port}", "tcp://0.0.0.0", self._launcher_address, silence_s,
                        local_sys_path())
        info = self._infos[host.name]
        remote = f"exec {shlex.quote(info.python)} -u -m flowgraph worker"
        self._processes.spawn(replica.id, label, ssh_command(host, self._settings, remote),
                              describe=functools.partial(_describe_ssh, host.name), incarnation=incarnation,
                              remote=True)
        return Site(f"tcp://{info.launcher_address}:{port}", "tcp://0.0.0.0", info.address, silence_s)


def _describe_ssh(host: str, code: int) -> str:
    if code == 255:
        return f"lost its ssh connection to {host} (ssh exited with status 255)"
    return describe_status(code)

