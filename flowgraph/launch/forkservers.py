"""A host's template process as the launcher sees it: started once per host, told which replicas to fork.

The template (``flowgraph.runtime.forkserver``) runs under a command that
reaches its host: this interpreter for this machine, ``ssh HOST exec python
-m flowgraph forkserver``, or a Slurm step. Its stdin and stdout carry
frames; its stderr is the template's own diagnostics. Frames to it go
through a thread and a queue, so a host that stopped reading (its link
cut) never blocks the launcher.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..runtime.config import WorkerConfig
from ..runtime.forkserver import Frames, Shared, frame
from .output import OutputForwarder

if TYPE_CHECKING:
    from .processes import Transport  # processes.py imports this module

Listener = Callable[["Forkserver", list[Any]], None]
"""Gets every message of a template (``out``, ``exit``, ...) and, when its process ended, ``["ended", status]``."""


class Forkserver:
    """One template process: ``spawn`` and ``kill`` replicas; its messages go to ``listener`` from a thread."""

    def __init__(self, host: str, transport: Transport, shared: Shared, output: OutputForwarder,
                 listener: Listener) -> None:
        self.host = host
        self.transport = transport
        self.process = subprocess.Popen(transport.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                        start_new_session=True)
        self._shared = shared
        self._listener = listener
        self._output = output
        self.label = f"forkserver@{host}"
        output.follow(self.label, self.label, None, self.process.stderr)
        self._frames: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._frames.put(frame("run", pickle.dumps(shared, protocol=5)))
        self._writer = threading.Thread(target=self._write, name=f"flowgraph-to-{host}", daemon=True)
        self._reader = threading.Thread(target=self._read, name=f"flowgraph-from-{host}", daemon=True)
        self._writer.start()
        self._reader.start()

    def spawn(self, replica: str, incarnation: int, config: WorkerConfig) -> None:
        """Fork ``replica`` as ``incarnation`` (its running one, if any, is killed first)."""
        stripped = self._shared.strip(config)
        self._frames.put(frame("spawn", replica, incarnation, pickle.dumps(stripped, protocol=5)))

    def kill(self, replica: str) -> None:
        self._frames.put(frame("kill", replica))

    def close(self) -> None:
        """Close its stdin: it kills every replica it still runs and exits."""
        self._frames.put(None)

    def stderr_tail(self) -> str:
        return self._output.tail(self.label, wait_s=0.5)

    def join(self, timeout_s: float) -> bool:
        """Wait for its process to end (SIGKILL it after ``timeout_s``) and its messages to be heard."""
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join()
        return self.process.returncode == 0

    def _write(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            while (data := self._frames.get()) is not None:
                stdin.write(data)
                stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # it ended: the reader reports that
        finally:
            try:
                stdin.close()
            except BrokenPipeError:
                pass

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        frames = Frames()
        while data := os.read(stdout.fileno(), 1 << 20):
            for message in frames.feed(data):
                self._listener(self, message)
        stdout.close()
        self._listener(self, ["ended", self.process.wait()])
