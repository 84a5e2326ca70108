"""Run on a Slurm allocation: its nodes are the run's hosts, and each node's template is a job step.

Inside an allocation (an ``sbatch`` script or ``salloc``: ``SLURM_JOB_ID``
is set), ``--slurm`` takes the allocation's nodes, each with as many slots
as Slurm gave it CPUs; ``hosts=`` pins a node to node names. Outside one,
``--slurm-args "-N 3 -p debug"`` asks for an allocation with ``salloc``,
whose command is a small Python program that prints the allocation and
then reads its stdin until the launcher's end closes: the allocation lives
exactly as long as the launcher (a SIGKILL included), and is released when
the run ends, fails or is interrupted. A request still pending when the
launcher goes is withdrawn too (``_KEEP``).

Before any replica starts, every node is probed with a step of its own, in
parallel (``launch.probe``): the same Python and flowgraph as here, its
Slurm node name, and the addresses it reaches the launcher from and at
(``SLURM_LAUNCH_NODE_IPADDR``, unless ``--advertise``). Each node then runs
one template as a step, ``srun --overlap -N1 -n1 -w NODE ... python -m
flowgraph forkserver``, with the configurations, token and CURVE keys on
the step's stdin, as over ssh; killing the step's ``srun`` or closing its
stdin ends the template and its replicas, and ``scancel`` of the job ends
every step. A step that ends under its replicas means its node is lost:
with restarts they start again on another node of the allocation.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import AllocationEnded, HostError
from ..model.hosts import Host
from ..model.plan import Plan, ReplicaPlan
from ..settings import Timeouts
from .base import RunConfig, Site
from .probe import PROBE, last_line, version_mismatch
from .processes import Transport, describe_forkserver
from .remote import RemoteBackend

log = logging.getLogger(__name__)

COMMANDS = ("srun", "squeue", "scancel", "scontrol")
_RELEASE_S = 10.0
"""How long ``salloc`` may take to release the allocation once its command ended, before it is cancelled."""

_HOLD = """
import json, os, sys
print(json.dumps({name: os.environ.get(name, "") for name in
                  ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_JOB_CPUS_PER_NODE")}), flush=True)
while sys.stdin.buffer.read(65536):
    pass
"""
"""salloc's command: say what was allocated, then hold the allocation until the launcher's end of stdin closes."""

_KEEP = """
import select, subprocess, sys
salloc = subprocess.Popen(sys.argv[1:])
hangup = select.poll()
hangup.register(0, select.POLLHUP)
while salloc.poll() is None and not hangup.poll(200):
    pass
if salloc.poll() is None:
    try:
        salloc.wait(3)
    except subprocess.TimeoutExpired:
        salloc.terminate()
sys.exit(salloc.wait())
"""
"""Runs salloc, and ends it when the launcher's end of stdin closes: a granted allocation ends with salloc's
command, which reads that stdin; a pending request would wait on, were salloc not terminated (it then withdraws it)."""


@dataclass(frozen=True)
class SlurmSettings:
    """``--slurm``, ``--slurm-args``, and the options shared with ssh hosts."""

    args: str | None = None
    """salloc options to ask for an allocation with (None: run in the allocation this runs in)."""
    python: str | None = None
    """The interpreter on the nodes (default: this one; a cluster's nodes share its file system)."""
    advertise: str | None = None
    """The address the nodes reach the launcher at (default: ``SLURM_LAUNCH_NODE_IPADDR`` in a step)."""


@dataclass(frozen=True)
class Allocation:
    """A Slurm job's nodes, each a host with a slot per CPU."""

    job_id: str
    hosts: tuple[Host, ...]

    @property
    def names(self) -> str:
        return ",".join(host.name for host in self.hosts)


def require_commands(*commands: str) -> None:
    """``HostError`` naming the Slurm commands (``COMMANDS`` and ``commands``) that are not on PATH."""
    missing = [command for command in (*COMMANDS, *commands) if shutil.which(command) is None]
    if missing:
        raise HostError(f"the Slurm commands {', '.join(missing)} are not on PATH (install slurm-client)")


def expand_cpus(text: str) -> list[int]:
    """``SLURM_JOB_CPUS_PER_NODE`` (``4(x3),2``) as one count per node."""
    counts = []
    for part in filter(None, text.split(",")):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            raise HostError(f"cannot read SLURM_JOB_CPUS_PER_NODE={text!r}")
        counts += [int(match[1])] * int(match[2] or 1)
    return counts


def expand_nodelist(nodelist: str) -> list[str]:
    """A Slurm node list (``n[1-3],gpu7``) as node names, as ``scontrol show hostnames`` gives them."""
    result = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise HostError(f"scontrol cannot read the node list {nodelist!r}: {last_line(result.stderr)}")
    return result.stdout.split()


def allocation_of(environment: Mapping[str, str]) -> Allocation:
    """The allocation described by ``SLURM_JOB_*`` variables; ``HostError`` if there is none."""
    job_id = environment.get("SLURM_JOB_ID", "")
    if not job_id:
        raise HostError("--slurm runs inside a Slurm allocation (sbatch, salloc: SLURM_JOB_ID is not set); "
                        'outside one, give --slurm-args "-N 3 ..." to ask for an allocation')
    require_commands()
    names = expand_nodelist(environment.get("SLURM_JOB_NODELIST", ""))
    cpus = expand_cpus(environment.get("SLURM_JOB_CPUS_PER_NODE", ""))
    if not names or len(cpus) != len(names):
        raise HostError(f"the Slurm job {job_id} gives no usable node list (SLURM_JOB_NODELIST="
                        f"{environment.get('SLURM_JOB_NODELIST', '')!r}, SLURM_JOB_CPUS_PER_NODE="
                        f"{environment.get('SLURM_JOB_CPUS_PER_NODE', '')!r})")
    return Allocation(job_id, tuple(Host(name, slots=count) for name, count in zip(names, cpus, strict=True)))


def job_state(job_id: str) -> str:
    """The job's state as ``squeue`` shows it (``RUNNING``, ``CANCELLED``, ...); empty when Slurm forgot it."""
    result = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                            timeout=30)
    return result.stdout.strip()


def why_ended(job_id: str) -> str | None:
    """Why the job cannot run replicas any more, or None while it runs."""
    state = job_state(job_id)
    if state == "RUNNING":
        return None
    if state in ("CANCELLED", ""):
        return f"the Slurm job {job_id} was cancelled"
    if state == "TIMEOUT":
        return f"the Slurm job {job_id} reached its time limit"
    return f"the Slurm job {job_id} ended ({state.lower()})"


@contextlib.contextmanager
def allocated(settings: SlurmSettings, name: str) -> Iterator[Allocation]:
    """The allocation to run in: this one, or one asked for with ``settings.args`` and released at the end."""
    if settings.args is None:
        allocation = allocation_of(os.environ)
        reason = why_ended(allocation.job_id)
        if reason:
            raise HostError(reason)
        yield allocation
        return
    require_commands("salloc")
    with _Holder(settings.args, name) as holder:
        yield holder.allocation


class _Holder:
    """An allocation held by ``salloc`` running ``_HOLD``: granted on entry, released on exit."""

    def __init__(self, args: str, name: str) -> None:
        self._args = args
        command = [sys.executable, "-c", _KEEP, "salloc", *shlex.split(args), "--job-name", name,
                   sys.executable, "-c", _HOLD]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True,
                                         env={name: value for name, value in os.environ.items()
                                              if name not in ("SLURM_JOB_ID", "SLURM_JOBID")})
        self._said: list[str] = []
        self._job_id = ""
        self._stderr = threading.Thread(target=self._read_stderr, name="flowgraph-salloc", daemon=True)
        self._stderr.start()
        self.allocation: Allocation

    def __enter__(self) -> _Holder:
        try:
            self.allocation = self._granted()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._release()

    def _granted(self) -> Allocation:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()  # blocks while the job pends (Ctrl-C interrupts it)
        if not line:
            self._process.wait()
            self._stderr.join(5)
            raise HostError(f"salloc {self._args} could not allocate: "
                            f"{last_line(''.join(self._said))}")
        described = json.loads(line)
        self._job_id = described["SLURM_JOB_ID"]
        log.info("the Slurm job %s is allocated", self._job_id)
        return allocation_of(described)

    def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        for raw in self._process.stderr:
            text = raw.decode("utf-8", "replace")
            self._said.append(text)
            if "Granted" not in text and "has been revoked" not in text and "Relinquishing" not in text:
                print(f"[salloc] {text}", end="", file=sys.stderr, flush=True)
            job = re.search(r"job allocation (\d+)", text)
            if job and not self._job_id:
                self._job_id = job[1]

    def _release(self) -> None:
        """End salloc's command, so salloc gives the allocation back; cancel the job if it does not in time."""
        if self._process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self._process.stdin.close()
        try:
            self._process.wait(_RELEASE_S)
        except subprocess.TimeoutExpired:
            self._process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(_RELEASE_S)
        if self._job_id and job_state(self._job_id) in ("RUNNING", "PENDING", "CONFIGURING"):
            subprocess.run(["scancel", self._job_id], capture_output=True, timeout=30)
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._stderr.join(5)


def check_pins(plan: Plan, allocation: Allocation) -> None:
    """``HostError`` naming the nodes ``hosts=`` pins replicas to that are not in the allocation."""
    nodes = {host.name for host in allocation.hosts}
    for node in plan.nodes:
        outside = [name for name in node.hosts if name not in nodes]
        if outside:
            raise HostError(f"node {node.name!r} is pinned to {', '.join(outside)}, not a node of the Slurm job "
                            f"{allocation.job_id} (its nodes: {allocation.names})")


@dataclass(frozen=True)
class NodeInfo:
    """What the probe step learned about one node."""

    host: Host
    python: str
    launcher_address: str
    address: str


def srun(job_id: str, node: str, *options: str) -> list[str]:
    """The start of an ``srun`` that runs one task on ``node`` of job ``job_id``, beside the other steps."""
    return ["srun", f"--jobid={job_id}", "--overlap", "-N1", "-n1", f"--nodelist={node}", "--quiet", *options]


def probe_nodes(allocation: Allocation, settings: SlurmSettings, timeout_s: float) -> dict[str, NodeInfo]:
    """Probe every node with a step of its own, in parallel; one ``HostError`` names every node that cannot."""
    with ThreadPoolExecutor(max_workers=min(32, len(allocation.hosts))) as pool:
        results = list(pool.map(lambda host: _probe(allocation.job_id, host, settings, timeout_s), allocation.hosts))
    errors = [result for result in results if isinstance(result, str)]
    if errors:
        raise HostError("\n".join(errors))
    return {info.host.name: info for info in results if isinstance(info, NodeInfo)}


def _probe(job_id: str, host: Host, settings: SlurmSettings, timeout_s: float) -> NodeInfo | str:
    python = settings.python or sys.executable
    where = f"Slurm node {host.name!r}"
    command = [*srun(job_id, host.name, "--job-name=flowgraph-probe"), python, "-c", PROBE,
               *([settings.advertise] if settings.advertise else [])]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"{where} did not run the probe step within {timeout_s:g} s"
    said = last_line(result.stderr)
    try:
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        if "execve" in result.stderr or "No such file" in result.stderr:
            return f"{where} has no Python at {python!r} ({said}); name one with --remote-python"
        return f"{where} cannot run a step (srun exit {result.returncode}): {said}"
    mismatch = version_mismatch(where, python, answer)
    if mismatch:
        return mismatch
    launcher = settings.advertise or answer["launch_address"]
    if not launcher or not answer["address"]:
        return f"{where} does not say how it reaches the launcher (no SLURM_LAUNCH_NODE_IPADDR); give --advertise"
    return NodeInfo(host, python, launcher, answer["address"])


class SlurmBackend(RemoteBackend):
    """Replicas on the nodes of a Slurm allocation, a template step per node; all CURVE."""

    mode = "slurm"

    def __init__(self, plan: Plan, allocation: Allocation, settings: SlurmSettings, timeouts: Timeouts) -> None:
        """Probe the nodes; raises ``HostError`` before anything starts."""
        check_pins(plan, allocation)
        self._allocation = allocation
        self._infos = probe_nodes(allocation, settings, timeouts.probe_s)
        self._job = plan.topology
        super().__init__(plan, timeouts)

    def ended(self) -> str | None:
        return why_ended(self._allocation.job_id)

    def restart(self, replica: ReplicaPlan, config: RunConfig, incarnation: int, skip: int, host_lost: bool) -> str:
        reason = self.ended()
        if reason:
            raise AllocationEnded(reason)
        return super().restart(replica, config, incarnation, skip, host_lost)

    def _usable(self, host: Host, replica: ReplicaPlan) -> bool:
        return host.name in self._infos

    def _reach(self, host: Host, config: RunConfig) -> tuple[Transport, Site]:
        info = self._infos[host.name]
        command = [*srun(self._allocation.job_id, host.name, f"--cpus-per-task={host.slots}", "--input=all", "-u",
                         "--kill-on-bad-exit=1", f"--job-name=flowgraph-{self._job}"),
                   info.python, "-u", "-m", "flowgraph", "forkserver"]
        transport = Transport(command, functools.partial(_describe_step, host.name), lambda status: True)
        site = Site(f"tcp://{info.launcher_address}:{config.control_port}", "tcp://0.0.0.0", info.address,
                    config.timeouts.remote_silence_s)
        return transport, site


def _describe_step(node: str, code: int) -> str:
    return describe_forkserver(code, f"its forkserver's Slurm step on {node}")
