"""The exceptions flowgraph raises, and the phases of a replica they name.

::

    FlowgraphError                 exit code 1 unless a subclass says otherwise
    ├── TopologyError              the topology is wrong; nothing was started (exit 2)
    ├── RunFailed                  a replica failed or died during a run (exit 1)
    ├── RunInterrupted             Ctrl-C or SIGTERM stopped the run (exit 130 / 143)
    ├── HostError                  ssh, Slurm or a remote environment is unusable (exit 2)
    ├── AllocationEnded            the cluster manager ended the run's allocation: scancel, time limit (exit 1)
    └── CheckpointError            a checkpoint cannot be taken or cannot serve this topology (exit 2)

Every class carries the process exit code the command line uses for it as
``exit_code``.
"""

from __future__ import annotations

import enum
import os
import signal
import traceback
from typing import Any

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class Phase(str, enum.Enum):
    """Where in its life a replica failed (``RunFailed.phase``); compares equal to its value.

    >>> Phase.SETUP == "setup", str(Phase.SETUP), Phase.SETUP.description
    (True, 'setup', 'setup()')
    """

    LOAD = "load"
    """Unpickling its node code in the worker (a module missing there, a ``__reduce__`` that raises)."""
    SETUP = "setup"
    """``setup()``, or making the instance of a class node."""
    GENERATE = "generate"
    """A source's ``generate()`` (or its generator function)."""
    PROCESS = "process"
    """``process(item)``; the failure carries the item."""
    FINISH = "finish"
    """``finish()``, after end of stream from every upstream replica."""
    TEARDOWN = "teardown"
    """``teardown()``, which runs after errors too."""
    RECEIVE = "receive"
    """Receiving data: a checked message of this run broke the protocol (a lost or repeated batch)."""
    SEND = "send"
    """Sending output: an item its edge's serializer cannot encode, a consumer that never subscribed."""
    RUNTIME = "runtime"
    """flowgraph itself (a bug), or a replica that died or stopped answering."""
    CHECKPOINT = "checkpoint"
    """Taking or restoring its state for a checkpoint: a state that cannot be pickled, a ``restore()`` that raises."""

    def __str__(self) -> str:
        return str(self.value)

    @property
    def description(self) -> str:
        """The phase as the failure message says it: ``setup()``, ``receiving data``."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Phase.LOAD: "loading its code", Phase.SETUP: "setup()", Phase.GENERATE: "generate()",
    Phase.PROCESS: "process()", Phase.FINISH: "finish()", Phase.TEARDOWN: "teardown()",
    Phase.RECEIVE: "receiving data", Phase.SEND: "sending its output", Phase.RUNTIME: "the runtime",
    Phase.CHECKPOINT: "its checkpoint",
}


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


class AllocationEnded(FlowgraphError):
    """The Slurm job the run ran in ended under it (``scancel``, its time limit); every replica was stopped.

    ``report`` is the run's partial ``RunReport``.
    """

    exit_code = 1
    report: Any = None


class CheckpointError(FlowgraphError):
    """A checkpoint cannot be taken (a state that does not pickle) or cannot serve the topology on ``--resume``
    (a node added, removed or changed; a state that cannot be split); the message names the node."""

    exit_code = 2


class RunFailed(FlowgraphError):
    """A replica failed, so the whole run was stopped.

    Attributes name where it happened: ``node``, ``replica`` (index),
    ``host``, ``phase`` (a ``Phase``, equal to its name: ``"setup"``,
    ``"process"``, ...), ``remote_traceback`` (the traceback text from the
    replica, or ``""``), ``signal_name`` (e.g. ``"SIGKILL"`` when the process
    was killed, else ``None``) and ``item`` (a truncated repr of the input
    item being processed, or ``None``).
    """

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        node: str,
        replica: int,
        host: str,
        phase: Phase = Phase.RUNTIME,
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
        text = str(self.args[0])
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


def user_traceback(error: BaseException) -> str:
    """The traceback of ``error`` without flowgraph's and importlib's frames, with the source lines."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith((_PACKAGE_DIR, "<frozen "))]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames),
             *traceback.format_exception_only(type(error), error)]
    return "".join(lines)
