"""Start replicas on other machines with the system ``ssh`` client.

Before anything starts, every remote host is probed over ssh (in parallel):
it must answer within ``ConnectTimeout``, run the same Python minor version
and the same flowgraph version as the launcher (node code travels pickled).
The probe also reads ``SSH_CONNECTION`` there, which tells two addresses:
how the host reaches the launcher (the client side of the connection) and
how the launcher reached the host (the server side), which other replicas
then use to reach its data sockets. ``--advertise`` and a host's
``address=`` override them.

Each remote host runs one template, ``ssh ... exec python -u -m flowgraph
forkserver``, which forks that host's replicas (``launch.processes``): ssh
runs in BatchMode (never a password prompt; your ssh config and agent
apply), the configurations, token and CURVE keys go over ssh's stdin, and
the replicas' stdout/stderr come back through ssh. When the launcher dies or
kills the ssh client, the template's stdin closes and it kills its replicas;
when the network is cut, both sides notice the missing heartbeats within
``Timeouts.remote_silence_s``.
"""

from __future__ import annotations

import functools
import json
import logging
import shlex
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import HostError
from ..model.hosts import Host
from ..model.plan import Plan, ReplicaPlan
from ..settings import Timeouts
from .base import RunConfig, Site, local_sys_path
from .local import LOCAL
from .probe import PROBE, last_line, version_mismatch
from .processes import Transport, describe_forkserver
from .remote import RemoteBackend

log = logging.getLogger(__name__)

SSH_OPTIONS = (
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=5",
    "-o", "ServerAliveInterval=1",
    "-o", "ServerAliveCountMax=3",
)
DEFAULT_PYTHON = "python3"

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
    command = ssh_command(host, settings, f"exec {shlex.quote(python)} -c {shlex.quote(PROBE)}")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"host {host.name!r} did not answer over ssh within {timeout_s:g} s"
    said = last_line(result.stderr)
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
    mismatch = version_mismatch(f"host {host.name!r}", python, answer)
    if mismatch:
        return mismatch
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


class SshBackend(RemoteBackend):
    """Workers on remote hosts through ssh, and on this machine for ``localhost``; all CURVE."""

    mode = "hosts"

    def __init__(self, plan: Plan, settings: SshSettings, timeouts: Timeouts) -> None:
        """Probe every remote host of ``plan``; raises ``HostError`` before anything starts."""
        self._settings = settings
        self._probe_s = timeouts.probe_s
        self._infos = probe_hosts((host for host in plan.hosts if not host.is_local), settings, timeouts.probe_s)
        self._launcher_address = settings.advertise or next(iter(self._infos.values())).launcher_address
        super().__init__(plan, timeouts)

    def _usable(self, host: Host, replica: ReplicaPlan) -> bool:
        """A host that runs no replica yet is probed first."""
        if host.is_local or host.name in self._infos:
            return True
        try:
            self._infos.update(probe_hosts([host], self._settings, self._probe_s))
        except HostError as error:
            log.warning("%s cannot take %s: %s", host.name, replica.id, error)
            return False
        return True

    def _reach(self, host: Host, config: RunConfig) -> tuple[Transport, Site]:
        port = config.control_port
        silence_s = config.timeouts.remote_silence_s
        if host.is_local:
            return LOCAL, Site(f"tcp://127.0.0.1:{port}", "tcp://0.0.0.0", self._launcher_address, silence_s,
                               local_sys_path())
        info = self._infos[host.name]
        remote = f"exec {shlex.quote(info.python)} -u -m flowgraph forkserver"
        transport = Transport(ssh_command(host, self._settings, remote), functools.partial(_describe_ssh, host.name),
                              lambda status: status == 255)
        return transport, Site(f"tcp://{info.launcher_address}:{port}", "tcp://0.0.0.0", info.address, silence_s)


def _describe_ssh(host: str, code: int) -> str:
    if code == 255:
        return f"lost its ssh connection to {host} (ssh exited with status 255)"
    return describe_forkserver(code, f"its forkserver on {host}")
