"""Worker processes, local or through ssh: start, follow their output, notice their end, kill.

Every worker starts in its own session (a Ctrl-C at the terminal reaches
only the launcher, which stops the run in order) with its configuration on
stdin, which stays open as the lifeline: when the launcher dies, the worker
(or, through ssh, the remote worker) sees end of file and exits. stdout and
stderr come back through pipes and are printed line by line with a
``[node/replica@host]`` prefix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

from ..runtime.bootstrap import encode_config
from ..runtime.config import WorkerConfig
from .base import Exit
from .output import OutputForwarder


class WorkerProcesses:
    """The worker processes of one run, by replica id (the current incarnation's; replaced ones are retired)."""

    def __init__(self) -> None:
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._describe: dict[str, Callable[[int], str]] = {}
        self._incarnations: dict[str, int] = {}
        self._remote: dict[str, bool] = {}
        self._reported: set[str] = set()
        self._retired: list[subprocess.Popen[bytes]] = []
        """Processes of replaced incarnations: killed, reaped at the end."""
        self._output = OutputForwarder()

    def spawn(self, replica_id: str, label: str, command: list[str],
              describe: Callable[[int], str] = lambda code: describe_status(code), incarnation: int = 0,
              remote: bool = False) -> None:
        """Start ``command`` for ``replica_id``; ``describe`` turns its exit status into words.

        A replica that has a process already (a restart) gets a new one; the
        old one is killed if it still runs.
        """
        old = self._processes.get(replica_id)
        if old is not None:
            if old.poll() is None:
                old.kill()
            self._retired.append(old)
            self._reported.discard(replica_id)
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        self._processes[replica_id] = process
        self._describe[replica_id] = describe
        self._incarnations[replica_id] = incarnation
        self._remote[replica_id] = remote
        self._output.follow(replica_id, label, process.stdout, process.stderr)

    def configure(self, replica_id: str, config: WorkerConfig) -> None:
        """Write the worker's configuration to its stdin (and keep stdin open)."""
        stdin = self._processes[replica_id].stdin
        assert stdin is not None
        try:
            stdin.write(encode_config(config))
            stdin.flush()
        except BrokenPipeError:
            pass  # it died at start; exits() reports it with its last output

    def exits(self) -> list[Exit]:
        """Replicas whose process ended since the last call."""
        ended = []
        for replica_id, process in self._processes.items():
            if replica_id in self._reported or process.poll() is None:
                continue
            self._reported.add(replica_id)
            code = process.returncode
            ended.append(Exit(replica_id, self._describe[replica_id](code), code == 0,
                              signal.Signals(-code).name if code < 0 else None,
                              self._output.tail(replica_id), self._incarnations[replica_id],
                              host_lost=self._remote[replica_id] and code == 255))
        return ended

    def wait(self, timeout_s: float) -> bool:
        """Wait until every process has exited; False if some still run after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        for process in [*self._processes.values(), *self._retired]:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True

    def kill(self) -> None:
        """SIGKILL every process still running (for ssh: the client, which ends the remote worker's stdin)."""
        for process in self._processes.values():
            if process.poll() is None:
                process.kill()

    def close(self) -> None:
        """Kill what is left, reap every process and flush their output."""
        self.kill()
        for process in [*self._processes.values(), *self._retired]:
            process.wait()
            if process.stdin is not None:
                process.stdin.close()
        self._output.close()


def describe_status(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class ProcessBackend:
    """What local and ssh backends share: their workers are ``WorkerProcesses``."""

    def __init__(self) -> None:
        self._processes = WorkerProcesses()

    def exits(self) -> list[Exit]:
        return self._processes.exits()

    def wait(self, timeout_s: float) -> bool:
        return self._processes.wait(timeout_s)

    def kill(self) -> None:
        self._processes.kill()

    def close(self) -> None:
        self._processes.close()
