"""The exceptions flowgraph raises.

::

    FlowgraphError                 exit code 1 unless a subclass says otherwise
    ├── TopologyError              the topology is wrong; nothing was started (exit 2)
    ├── RunFailed                  a replica failed or died during a run (exit 1)
    ├── RunInterrupted             Ctrl-C or SIGTERM stopped the run (exit 130 / 143)
    └── HostError                  ssh or a remote environment is unusable (exit 2)

Every class carries the process exit code the command line uses for it as
``exit_code``.
"""

from __future__ import annotations

import signal
from typing import Any


class FlowgraphError(Exception):
    """Base class of every error flowgraph raises on purpose."""

    exit_code = 1


class TopologyError(FlowgraphError):
    """The topology is invalid: raised before any process or thread starts.

    The message names the node and the problem, e.g. ``node 'store' lists
    input 'parse', which is not declared in topology 'crawl' (declared:
    fetch, analyze)``.
    """

    exit_code = 2


class HostError(FlowgraphError):
    """A host cannot run workers (unreachable, wrong Python, wrong version)."""

    exit_code = 2


class RunFailed(FlowgraphError):
    """A replica failed, so the whole run was stopped.

    Attributes name where it happened: ``node``, ``replica`` (index),
    ``host``, ``phase`` (``setup``, ``process``, ``finish``, ``teardown``,
    ``generate`` or ``runtime``), ``remote_traceback`` (the traceback text
    from the replica, or ``""``), ``signal_name`` (e.g. ``"SIGKILL"`` when
    the process was killed, else ``None``) and ``item`` (a truncated repr of
    the input item being processed, or ``None``).
    """

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        node: str,
        replica: int,
        host: str,
        phase: str = "runtime",
        remote_traceback: str = "",
        signal_name: str | None = None,
        item: str | None = None,
    ) -> None:
        super().__init__(message)
        self.node = node
        self.replica = replica
        self.host = host
        self.phase = phase
        self.remote_traceback = remote_traceback
        self.signal_name = signal_name
        self.item = item
        self.report: Any = None
        """A ``RunReport`` of what every replica had done when the run stopped (set by ``run``)."""

    def __str__(self) -> str:
        text = self.args[0]
        if self.remote_traceback:
            text += "\n" + self.remote_traceback.rstrip()
        return text


class RunInterrupted(FlowgraphError):
    """The run was stopped by SIGINT (Ctrl-C) or SIGTERM; every replica was stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; every replica was stopped")
        self.signum = signum
        self.exit_code = 128 + signum
        self.report: Any = None
        """A ``RunReport`` of what every replica had done when the run stopped (set by ``run``)."""
