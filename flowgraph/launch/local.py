"""Start every replica as a fresh local Python process (never a fork of the launcher).

Each worker is ``python -m flowgraph worker`` in its own session (so a
Ctrl-C at the terminal reaches only the launcher, which stops the run in
order). Its configuration arrives on stdin, which stays open as the
lifeline: if the launcher dies, the worker sees end of file and exits.
stdout and stderr come back through pipes and are printed line by line
with a ``[node/replica@host]`` prefix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from .._bootstrap import encode_config
from ..plan import ReplicaPlan
from ._output import OutputForwarder
from .base import Exit, WorkerConfig

LAUNCHER_TIMEOUT_S = 10.0
"""A local worker also stops when the launcher is silent this long (it dies with stdin anyway)."""


class LocalBackend:
    """Worker processes on this machine, data over TCP on 127.0.0.1."""

    mode = "local"
    control_bind = "tcp://127.0.0.1"
    data_bind = "tcp://127.0.0.1"
    heartbeat_timeout_s: float | None = 10.0

    def __init__(self) -> None:
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._reported: set[str] = set()
        self._output = OutputForwarder()

    def start(self, replicas: Sequence[ReplicaPlan], config: WorkerConfig) -> None:
        """Start one process per replica and hand each its configuration."""
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for replica in replicas:
            process = subprocess.Popen(
                [sys.executable, "-m", "flowgraph", "worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment,
                start_new_session=True,
            )
            self._processes[replica.id] = process
            self._output.follow(replica.id, f"{replica.id}@{replica.host}", process.stdout, process.stderr)
        # Configurations are written once every process is starting: a write larger than
        # the pipe buffer waits for its worker to read, and they all start meanwhile.
        for replica in replicas:
            stdin = self._processes[replica.id].stdin
            assert stdin is not None
            try:
                stdin.write(encode_config(config.for_replica(replica, LAUNCHER_TIMEOUT_S)))
                stdin.flush()
            except BrokenPipeError:
                pass  # the worker died at start; exits() reports it with its last output

    def exits(self) -> list[Exit]:
        """Replicas whose process ended since the last call."""
        ended = []
        for replica_id, process in self._processes.items():
            if replica_id in self._reported or process.poll() is None:
                continue
            self._reported.add(replica_id)
            ended.append(Exit(replica_id, _describe(process.returncode), process.returncode == 0,
                              _signal_name(process.returncode), self._output.tail(replica_id)))
        return ended

    def wait(self, timeout_s: float) -> bool:
        """Wait until every process has exited; False if some are still running after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        for process in self._processes.values():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True

    def kill(self) -> None:
        """SIGKILL every process still running."""
        for process in self._processes.values():
            if process.poll() is None:
                process.kill()

    def close(self) -> None:
        """Kill what is left, reap every process and flush their output."""
        self.kill()
        for process in self._processes.values():
            process.wait()
            if process.stdin is not None:
                process.stdin.close()
        self._output.close()


def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def _signal_name(returncode: int) -> str | None:
    return signal.Signals(-returncode).name if returncode < 0 else None
