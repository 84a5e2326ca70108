"""``--inproc``: every replica as a thread of the launcher's process, for debugging.

The same replica code and wire format run over ``inproc://`` sockets of one
ZeroMQ context; each replica gets its own unpickled copy of the node code,
so replicas share no state, as in process mode. What a replica prints is
prefixed ``[node/replica@localhost]`` as in process mode.

A thread cannot be killed: a replica stuck in user code that ignores the
stop request is left behind (as a daemon thread) when the run ends.
"""

from __future__ import annotations

import io
import math
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

import zmq

from ..model.plan import ReplicaPlan
from ..runtime.agent import Agent
from ..runtime.counters import Counters
from ..runtime.replica import run_configured
from .base import Exit, RunConfig, Site

_thread_label = threading.local()


class InprocBackend:
    """Replica threads in this process, data over ``inproc://``."""

    mode = "inproc"
    heartbeat_timeout_s: float | None = None

    def __init__(self, context: zmq.Context) -> None:
        self._context = context
        prefix = f"inproc://flowgraph-{secrets.token_hex(6)}"
        self.control_bind = f"{prefix}/control"
        self._data_bind = prefix
        self._threads: dict[str, threading.Thread] = {}
        self._incarnations: dict[str, int] = {}
        self._retired: list[threading.Thread] = []
        self._results: dict[tuple[str, int], bool] = {}
        self._reported: set[str] = set()
        self._saved_stdio: tuple[IO[str], IO[str]] | None = None

    def start(self, replicas: Sequence[ReplicaPlan], config: RunConfig) -> None:
        """Start one thread per replica, each with its own copy of the node code.

        From here until ``close()``, what replicas print goes to stderr,
        prefixed, as from worker processes.
        """
        self._saved_stdio = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _PrefixingStream(sys.stdout, sys.stderr), _PrefixingStream(sys.stderr, sys.stderr)
        for replica in replicas:
            self._spawn(replica, config, 0, 0)

    def restart(self, replica: ReplicaPlan, config: RunConfig, incarnation: int, skip: int, host_lost: bool) -> str:
        """A new thread for ``replica``; the replaced one was asked to stop (a thread cannot be killed)."""
        self._retired.append(self._threads[replica.id])
        self._reported.discard(replica.id)
        self._spawn(replica, config, incarnation, skip)
        return replica.host

    def _spawn(self, replica: ReplicaPlan, config: RunConfig, incarnation: int, skip: int) -> None:
        thread = threading.Thread(target=self._run, args=(replica, config, incarnation, skip), daemon=True,
                                  name=f"flowgraph-{replica.id}")
        self._threads[replica.id] = thread
        self._incarnations[replica.id] = incarnation
        thread.start()

    def _run(self, replica: ReplicaPlan, config: RunConfig, incarnation: int, skip: int) -> None:
        _thread_label.prefix = f"[{replica.id}@{replica.host}] "
        counters = Counters()
        agent = Agent(self._context, config.control, config.token, replica.id, on_stop=lambda reason: None,
                      counters=counters, heartbeat_s=config.timeouts.heartbeat_s, silence_s=math.inf,
                      incarnation=incarnation)
        pipe = agent.pipe()
        agent.start()
        try:
            site = Site(config.control, self._data_bind, None, math.inf)
            self._results[replica.id, incarnation] = run_configured(
                config.for_replica(replica, site, incarnation, skip), self._context, pipe, counters)
        finally:
            pipe.detach()
            agent.join()

    def exits(self) -> list[Exit]:
        """Replicas whose thread ended since the last call."""
        ended = []
        for replica_id, thread in self._threads.items():
            if replica_id in self._reported or thread.is_alive():
                continue
            self._reported.add(replica_id)
            incarnation = self._incarnations[replica_id]
            clean = self._results.get((replica_id, incarnation), False)
            ended.append(Exit(replica_id, "thread ended" if clean else "thread ended with an error", clean,
                              incarnation=incarnation))
        return ended

    def ended(self) -> str | None:
        return None

    def wait(self, timeout_s: float) -> bool:
        """Wait for every replica thread; False if some still run after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        threads = [*self._threads.values(), *self._retired]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def kill(self) -> None:
        """Threads cannot be killed; those still running are abandoned as daemon threads."""

    def close(self) -> None:
        """Give the process its own stdout and stderr back."""
        if self._saved_stdio is not None:
            sys.stdout, sys.stderr = self._saved_stdio
            self._saved_stdio = None


class _PrefixingStream(io.TextIOBase):
    """Writes of replica threads become whole prefixed lines on ``replicas``; others pass to ``target``."""

    def __init__(self, target: IO[str], replicas: IO[str]) -> None:
        self._target = target
        self._replicas = replicas
        self._partial = threading.local()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        prefix = getattr(_thread_label, "prefix", None)
        if prefix is None:
            return self._target.write(text)
        *lines, rest = (getattr(self._partial, "text", "") + text).split("\n")
        self._partial.text = rest
        if lines:
            with self._lock:
                self._replicas.write("".join(f"{prefix}{line}\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target, "encoding", "utf-8")
