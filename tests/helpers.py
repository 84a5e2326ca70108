"""Helpers for tests that start real launchers and workers."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil

MARKER = "FLOWGRAPH_TEST_SESSION"


def processes_of_this_session() -> list[psutil.Process]:
    """Every process started by this test session (they inherit the marker), except pytest itself."""
    me = os.getpid()
    session = os.environ.get(MARKER)
    found = []
    for process in psutil.process_iter(["pid"]):
        if process.pid == me:
            continue
        try:
            if process.environ().get(MARKER) == session:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def reap(processes: list[psutil.Process], timeout_s: float) -> list[str]:
    """Wait up to ``timeout_s`` for ``processes`` to end; kill and describe the ones that do not."""
    described = []
    for process in processes:
        try:
            described.append(f"{process.pid} {' '.join(process.cmdline())}")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    alive_pids = {p.pid for p in alive}
    return [text for text in described if int(text.split()[0]) in alive_pids]


def still_running(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """The processes that have neither exited nor become zombies within ``timeout_s``.

    A zombie has ended; only its parent (which may be the stopped launcher) can reap it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        running = []
        for process in processes:
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    running.append(process)
            except psutil.NoSuchProcess:
                continue
        if not running or time.monotonic() > deadline:
            return running
        psutil.wait_procs(running, timeout=0.2)


class PeakRss:
    """Samples the summed RSS of a process and all its descendants until stopped; ``peak`` in bytes."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.peak = 0
        self._pid = pid
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                root = psutil.Process(self._pid)
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for process in processes:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak = max(self.peak, total)


SLOW_TOPOLOGY = """
    import os
    import time
    from flowgraph import Topology

    topo = Topology("slow")

    @topo.source
    def numbers():
        for n in range(1_000_000):
            yield n

    @topo.node(inputs=numbers, parallelism=3)
    def work(n):
        return n

    @topo.sink(inputs=work)
    class Store:
        def setup(self):
            self.count = 0

        def process(self, n):
            self.count += 1
            if self.count == 1000:
                print("sink is working pid=" + str(os.getpid()), flush=True)
            time.sleep(0.001)
"""
"""Five replicas that run until stopped; the sink prints a line (with its pid) once items flow."""


def drive_sink(sink: Any, items: list[Any]) -> None:
    """Run a sink object through its whole life in this process: setup, process each item, finish, teardown."""
    sink.setup()
    try:
        for item in items:
            sink.process(item)
        sink.finish()
    finally:
        sink.teardown()


def write_topology(directory: Path, source: str, name: str = "topo.py") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


class Cli:
    """``python -m flowgraph ...`` as a child process whose output is read as it comes.

    Use as a context manager: on exit the launcher and every worker it
    started are killed, whatever happened in the test.
    """

    def __init__(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flowgraph", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env={**os.environ, **(env or {})},
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def __enter__(self) -> Cli:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill_all()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line)
                self._changed.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def wait_for_line(self, pattern: str, timeout_s: float = 30.0) -> str:
        """The first output line matching ``pattern``; fails with all output seen if none comes."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for line in self.stdout + self.stderr:
                    if regex.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not self._readers_alive()):
                    raise AssertionError(f"no line matching {pattern!r}; output so far:\n{self.output}")
                self._changed.wait(min(remaining, 0.5))

    def _readers_alive(self) -> bool:
        return any(reader.is_alive() for reader in self._readers)

    def wait(self, timeout_s: float = 60.0) -> int:
        """The exit status; fails (showing the output) if the launcher runs longer than ``timeout_s``."""
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout_s} s; output:\n{self.output}") from None
        for reader in self._readers:
            reader.join(10)
        return code

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill_all(self) -> None:
        everyone = [*self.descendants()]
        try:
            everyone.append(psutil.Process(self.process.pid))
        except psutil.NoSuchProcess:
            pass
        for process in everyone:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(everyone, timeout=5)
        self.process.wait(5)


def run_cli(*args: str, cwd: Path | None = None, timeout_s: float = 60.0,
            env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m flowgraph ...`` to its end: (exit status, stdout, stderr)."""
    with Cli(*args, cwd=cwd, env=env) as cli:
        code = cli.wait(timeout_s)
        return code, "".join(cli.stdout), "".join(cli.stderr)


REPO = Path(__file__).resolve().parents[1]


class TestHosts:
    """Hosts made by ``bin/testhosts`` in network namespaces, for a test session."""

    __test__ = False

    def __init__(self, count: int, prefix: str, subnet: str, directory: Path) -> None:
        self.names = [f"h{i}" for i in range(1, count + 1)]
        self.prefix = prefix
        self.subnet = subnet
        self.directory = directory
        self.ssh_config = str(directory / "ssh_config")
        self._env = {**os.environ, "FLOWGRAPH_TESTHOSTS_PREFIX": prefix, "FLOWGRAPH_TESTHOSTS_SUBNET": subnet,
                     "FLOWGRAPH_TESTHOSTS_DIR": str(directory)}

    def script(self, *args: str) -> None:
        subprocess.run([str(REPO / "bin" / "testhosts"), *args], env=self._env, check=True,
                       stdout=subprocess.DEVNULL, timeout=120)

    def namespace(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def address(self, name: str) -> str:
        return f"{self.subnet}.{10 + int(name[1:])}"

    def options(self, *names: str) -> list[str]:
        """``flowgraph run`` options that spread a run over ``names`` (default: every host)."""
        return ["--hosts", ",".join(names or self.names), "--ssh-config", self.ssh_config,
                "--remote-python", sys.executable]

    def pids(self, name: str) -> list[int]:
        output = subprocess.run(["ip", "netns", "pids", self.namespace(name)], capture_output=True,
                                text=True, check=True, timeout=10).stdout
        return [int(pid) for pid in output.split()]

    def sshd_pid(self, name: str) -> int:
        return int((self.directory / f"sshd_{name}.pid").read_text())

    def workers(self) -> list[psutil.Process]:
        """Every process in the hosts except their sshd daemons."""
        found = []
        for name in self.names:
            daemon = self.sshd_pid(name) if (self.directory / f"sshd_{name}.pid").exists() else None
            for pid in self.pids(name):
                if pid != daemon:
                    try:
                        found.append(psutil.Process(pid))
                    except psutil.NoSuchProcess:
                        pass
        return found

    def listening_ports(self, name: str) -> list[int]:
        """TCP ports listened on in host ``name``, sshd's excepted."""
        output = subprocess.run(["ip", "netns", "exec", self.namespace(name), "ss", "-Hltn"],
                                capture_output=True, text=True, check=True, timeout=10).stdout
        ports = [int(line.split()[3].rsplit(":", 1)[1]) for line in output.splitlines() if line.strip()]
        return [port for port in ports if port != 22]

    def kill_everything_in(self, name: str) -> None:
        """Kill every process of host ``name``, its sshd included (like pulling its plug)."""
        for pid in self.pids(name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def restart_sshd(self, name: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.namespace(name), "/usr/sbin/sshd", "-f",
                        str(self.directory / f"sshd_{name}.config")], check=True, timeout=10)
        for _ in range(100):
            if subprocess.run(["ssh", "-F", self.ssh_config, "-o", "BatchMode=yes", "-o", "ConnectTimeout=2",
                               name, "true"], capture_output=True, timeout=10).returncode == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"sshd of {name} does not answer after a restart")

    def set_link(self, name: str, state: str) -> None:
        """``down`` cuts host ``name`` off the network; ``up`` plugs it back."""
        subprocess.run(["ip", "link", "set", f"{self.prefix}v{name[1:]}", state], check=True, timeout=10)


class TestSlurm:
    """A Slurm cluster made by ``bin/testslurm`` (nodes n1..nN in network namespaces), for a test session."""

    __test__ = False

    def __init__(self, count: int, prefix: str, subnet: str, directory: Path, port: int = 16827) -> None:
        self.nodes = [f"n{i}" for i in range(1, count + 1)]
        self.prefix = prefix
        self.subnet = subnet
        self.directory = directory
        self.port = port
        self.conf = str(directory / "slurm.conf")
        # The daemons must not carry the test session's marker: no_leftover_processes would take them
        # for processes a test left behind. (Tasks do carry it: srun hands them the caller's environment.)
        self._daemon_env = {key: value for key, value in os.environ.items() if key != MARKER}
        self._script_env = {**self._daemon_env, "FLOWGRAPH_TESTSLURM_PREFIX": prefix,
                            "FLOWGRAPH_TESTSLURM_SUBNET": subnet, "FLOWGRAPH_TESTSLURM_DIR": str(directory),
                            "FLOWGRAPH_TESTSLURM_PORT": str(port)}

    def script(self, *args: str, timeout_s: float = 120.0) -> None:
        # In a session of its own: on a timeout the whole script goes (bin/testhosts and ssh under it), not
        # only its bash, which would leave them running on beside the `down` that follows. The daemons
        # it starts are in sessions of their own and stay (`down` ends them).
        process = subprocess.Popen([str(REPO / "bin" / "testslurm"), *args], env=self._script_env,
                                   stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            raise
        if returncode:
            raise subprocess.CalledProcessError(returncode, ["bin/testslurm", *args])

    @property
    def env(self) -> dict[str, str]:
        """This process's environment with SLURM_CONF: for srun, sbatch, salloc, squeue…"""
        return {**os.environ, "SLURM_CONF": self.conf}

    def run(self, *command: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (``squeue``, ``scontrol``…) on this cluster; fails on an error."""
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=True, timeout=timeout_s)

    def namespace(self, node: str) -> str:
        return f"{self.prefix}-h{node[1:]}"

    def address(self, node: str) -> str:
        return f"{self.subnet}.{10 + int(node[1:])}"

    def pids(self, node: str) -> list[int]:
        output = subprocess.run(["ip", "netns", "pids", self.namespace(node)], capture_output=True,
                                text=True, check=True, timeout=10).stdout
        return [int(pid) for pid in output.split()]

    def _pid_file(self, path: Path) -> int | None:
        try:
            return int(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def slurmd_pid(self, node: str) -> int | None:
        return self._pid_file(self.directory / f"slurmd-{node}.pid")

    def daemon_pids(self, node: str) -> set[int]:
        """The pids of the daemons of ``node``: its slurmd and its sshd (as their pid files say)."""
        files = [self.directory / f"slurmd-{node}.pid", self.directory / "hosts" / f"sshd_h{node[1:]}.pid"]
        return {pid for pid in map(self._pid_file, files) if pid is not None}

    def workers(self) -> list[psutil.Process]:
        """Every process on the nodes except slurmd and sshd: slurmstepd and the tasks of steps."""
        found = []
        for node in self.nodes:
            daemons = self.daemon_pids(node)
            for pid in self.pids(node):
                if pid not in daemons:
                    try:
                        found.append(psutil.Process(pid))
                    except psutil.NoSuchProcess:
                        pass
        return found

    def squeue(self) -> list[str]:
        """One line ``JOBID NAME STATE`` per job the cluster holds (pending, running, completing), any user's."""
        return self.run("squeue", "--all", "-h", "-o", "%i %j %T").stdout.splitlines()

    def steps(self) -> list[str]:
        """One line per job step (``squeue -s``), any user's."""
        return self.run("squeue", "--all", "-h", "-s").stdout.splitlines()

    def wait_no_jobs(self, timeout_s: float = 10.0) -> list[str]:
        """Wait up to ``timeout_s`` until squeue shows no job; the jobs still there (empty: none)."""
        deadline = time.monotonic() + timeout_s
        while True:
            jobs = self.squeue()
            if not jobs or time.monotonic() > deadline:
                return jobs
            time.sleep(0.05)

    def cancel_all(self, timeout_s: float = 10.0) -> list[str]:
        """scancel every job and wait up to ``timeout_s`` until squeue is empty; the jobs still there."""
        # "12+1" is a component of het job 12, "12_3" a task of job array 12: scancel takes both.
        ids = sorted({line.split()[0].split("+")[0] for line in self.squeue()})
        if ids:
            subprocess.run(["scancel", *ids], env=self.env, capture_output=True, timeout=30)
        return self.wait_no_jobs(timeout_s)

    def kill_slurmd(self, node: str) -> None:
        """SIGKILL the slurmd of ``node`` (its steps' slurmstepd and tasks live on)."""
        pid = self.slurmd_pid(node)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def restart_slurmd(self, node: str, timeout_s: float = 10.0) -> None:
        """Start the slurmd of ``node`` again and wait until it answers and the node is usable."""
        old = self.slurmd_pid(node)
        subprocess.run(["nsenter", f"--net=/run/netns/{self.namespace(node)}", "slurmd", "-f", self.conf,
                        "-N", node], env={**self._daemon_env, "FLOWGRAPH_TESTSLURM_CLUSTER": self.prefix},
                       check=True, timeout=30)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid = self.slurmd_pid(node)
            if pid is not None and pid != old and psutil.pid_exists(pid) and self._slurmd_listens(node):
                # Registered again: idle, mixed or allocated, not down or not responding (a trailing *).
                state = subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%t"], env=self.env,
                                       capture_output=True, text=True, timeout=10).stdout.strip()
                if state in ("idle", "mix", "alloc"):
                    return
            time.sleep(0.05)
        raise AssertionError(f"slurmd of {node} does not answer after a restart")

    def _slurmd_listens(self, node: str) -> bool:
        try:
            with socket.create_connection((self.address(node), self.port + 1), timeout=0.5):
                return True
        except OSError:
            return False

    def kill_everything_in(self, node: str) -> None:
        """Kill every process of ``node``, slurmd and sshd included (like pulling its plug)."""
        for pid in self.pids(node):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def set_link(self, node: str, state: str) -> None:
        """``down`` cuts ``node`` off the network; ``up`` plugs it back."""
        subprocess.run(["ip", "link", "set", f"{self.prefix}v{node[1:]}", state], check=True, timeout=10)
