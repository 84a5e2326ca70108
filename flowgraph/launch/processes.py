"""Worker processes, local or remote: forked by each host's template, followed, noticed when they end, killed.

Every host of a run gets one template (``forkserver.Forkserver``), started in
its own session (a Ctrl-C at the terminal reaches only the launcher, which
stops the run in order), which forks that host's replicas: one process start,
one ssh connection, one Slurm step per host, not per replica. A template's
stdin is the lifeline of all its replicas: when the launcher dies or kills
the template's command (the ssh client, the step), the template kills them
and exits. What replicas write comes back through their template and is
printed line by line with a ``[node/replica@host]`` prefix.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..runtime.config import WorkerConfig
from ..runtime.forkserver import Shared
from .base import Exit
from .forkservers import Forkserver
from .output import OutputForwarder

_CLOSE_S = 5.0
"""How long a template may take to kill its replicas and exit once told to, before its command is killed."""


@dataclass(frozen=True)
class Transport:
    """How a host's template is started and what the end of its command means."""

    command: list[str]
    describe: Callable[[int], str]
    """Its command's exit status in words, as the end of the replicas it ran: ``its forkserver was killed by
    SIGKILL``, ``lost its ssh connection to h2 (...)``."""
    lost: Callable[[int], bool] = lambda status: False
    """Whether that status means the host is gone (its replicas may start elsewhere)."""


@dataclass
class _Replica:
    host: str
    incarnation: int
    ended: bool = False


class WorkerProcesses:
    """The worker processes of one run: the current incarnation of each replica, on its host's template."""

    def __init__(self) -> None:
        self._servers: dict[str, Forkserver] = {}
        self._replicas: dict[str, _Replica] = {}
        self._exits: list[Exit] = []
        self._changed = threading.Condition()
        self._output = OutputForwarder()

    def spawn(self, replica_id: str, label: str, host: str, transport: Transport, shared: Shared,
              config: WorkerConfig, incarnation: int = 0) -> None:
        """Start ``replica_id`` on ``host`` (its template is started first if it runs none yet).

        A replica that runs already (a restart) is replaced: its template
        kills the old process, whose end is not reported.
        """
        with self._changed:
            old = self._replicas.get(replica_id)
            if old is not None and not old.ended and old.host != host:
                self._servers[old.host].kill(replica_id)
            server = self._servers.get(host)
            if server is None or server.process.poll() is not None:
                server = Forkserver(host, transport, shared, self._output, self._hear)
                self._servers[host] = server
            self._replicas[replica_id] = _Replica(host, incarnation)
            self._output.open(replica_id, label)
        server.spawn(replica_id, incarnation, config)

    def _hear(self, server: Forkserver, message: list[Any]) -> None:
        verb, *args = message
        with self._changed:
            if verb == "out":
                replica_id, incarnation, stream, data = args
                if self._is_current(replica_id, incarnation, server):
                    self._output.feed(replica_id, stream, data)
            elif verb == "exit":
                replica_id, incarnation, status = args
                if self._is_current(replica_id, incarnation, server):
                    self._output.end(replica_id)
                    self._ended(replica_id, describe_status(status), status == 0,
                                signal.Signals(-status).name if status < 0 else None)
            elif verb == "ended":
                self._server_ended(server, args[0])
            self._changed.notify_all()

    def _is_current(self, replica_id: str, incarnation: int, server: Forkserver) -> bool:
        replica = self._replicas.get(replica_id)
        return (replica is not None and not replica.ended and replica.incarnation == incarnation
                and self._servers.get(replica.host) is server)

    def _server_ended(self, server: Forkserver, status: int) -> None:
        """A template's command ended: every replica it still ran ended with it."""
        transport = server.transport
        running = [replica_id for replica_id, replica in self._replicas.items()
                   if not replica.ended and self._servers.get(replica.host) is server]
        if not running:
            return
        tail = server.stderr_tail()
        description = transport.describe(status)
        for replica_id in running:
            self._output.end(replica_id)
            self._ended(replica_id, description, False, None, tail, lost=transport.lost(status))

    def _ended(self, replica_id: str, description: str, clean: bool, signal_name: str | None,
               extra_tail: str = "", lost: bool = False) -> None:
        replica = self._replicas[replica_id]
        replica.ended = True
        self._exits.append(Exit(replica_id, description, clean, signal_name,
                                self._output.tail(replica_id, wait_s=0.0) + extra_tail, replica.incarnation,
                                host_lost=lost))

    def exits(self) -> list[Exit]:
        """Replicas whose process ended since the last call."""
        with self._changed:
            ended, self._exits = self._exits, []
            return ended

    def wait(self, timeout_s: float) -> bool:
        """Wait until every replica has exited; False if some still run after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while any(not replica.ended for replica in self._replicas.values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def kill(self) -> None:
        """End every template, which kills its replicas with SIGKILL."""
        with self._changed:
            servers = list(self._servers.values())
        for server in servers:
            server.close()

    def close(self) -> None:
        """Kill what is left, wait for every template (killing its command if it hangs), flush their output."""
        self.kill()
        for server in list(self._servers.values()):
            server.join(_CLOSE_S)
        self._output.close()


def describe_status(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def describe_forkserver(code: int, where: str = "its forkserver") -> str:
    """The end of a template's command in words: ``its forkserver was killed by SIGKILL``."""
    return f"{where} {'was ' if code < 0 else ''}{describe_status(code)}"


class ProcessBackend:
    """What local and ssh backends share: their workers are ``WorkerProcesses``."""

    def __init__(self) -> None:
        self._processes = WorkerProcesses()

    def exits(self) -> list[Exit]:
        return self._processes.exits()

    def ended(self) -> str | None:
        return None

    def wait(self, timeout_s: float) -> bool:
        return self._processes.wait(timeout_s)

    def kill(self) -> None:
        self._processes.kill()

    def close(self) -> None:
        self._processes.close()
