"""The replica thread's end of its control pipe: an inproc PAIR socket to its agent.

The agent (``runtime.agent``) owns the connection to the launcher and
forwards messages both ways; the replica thread only ever talks to the pipe.
Both ends live in one process, so messages cross it pickled as they are.
A ``Stop`` from the launcher is raised as ``Stopped`` wherever the replica
looks at the pipe, which it does whenever it waits for anything; a
``Rewire`` (a peer was restarted) is kept until the replica takes it
(``take_rewires``) at a point where it can reconnect; so are ``Checkpoint``
and ``Commit`` (``take_checkpoints``), taken between items. A loop's
``Probe`` is answered at once, wherever the pipe is read, with the counts
``on_probe`` gives (counting stays correct mid-item: an item counts as done
only once its outputs were emitted); ``Drained`` sets ``drained``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import zmq

from ..wire import serializers
from ..wire.control import Checkpoint, Commit, Drained, LoopCounts, Message, Probe, Rewire, Stop
from .failures import Stopped
from .sockets import ready_to_read

log = logging.getLogger(__name__)

M = TypeVar("M")


@dataclass(frozen=True)
class WatchHandshakes:
    """Replica → agent: log failed handshakes reported to these monitor endpoints."""

    endpoints: tuple[str, ...]


@dataclass(frozen=True)
class Detach:
    """Replica → agent: the replica is done with the control plane; the agent ends."""


@dataclass(frozen=True)
class Outgoing:
    """What the pipe carries from the replica to the agent: a message for the launcher, or one for the agent."""

    message: Message | WatchHandshakes | Detach
    attachment: Any = None


class ControlPipe:
    """The replica thread's end of the pipe to its agent."""

    def __init__(self, socket: zmq.Socket, replica_id: str) -> None:
        self.socket = socket
        self._replica_id = replica_id
        self._rewires: list[Rewire] = []
        self._checkpoints: list[Checkpoint | Commit] = []
        self.on_probe: Callable[[Probe], LoopCounts] | None = None
        """A replica in a loop: its counts for a probe of the loop's termination detection."""
        self.drained = False
        """A loop's head: the launcher found the loop drained (every source ended, nothing in flight)."""

    def receive(self, timeout_ms: int | None) -> Message | None:
        """The next message from the launcher, or None on timeout; raises ``Stopped`` on a stop, keeps a rewire."""
        if not self.socket.poll(timeout_ms):
            return None
        message = self.socket.recv_pyobj()
        if isinstance(message, Stop):
            raise Stopped(message.reason)
        if isinstance(message, Rewire):
            self._rewires.append(message)
            return None
        if isinstance(message, (Checkpoint, Commit)):
            self._checkpoints.append(message)
            return None
        if isinstance(message, Probe):
            assert self.on_probe is not None, "only replicas in a loop are probed"
            self.send(self.on_probe(message))
            return None
        if isinstance(message, Drained):
            self.drained = True
            return None
        return message  # type: ignore[no-any-return]  # the agent sends only Messages

    def take_rewires(self) -> list[Rewire]:
        """The rewires that came since the last call (after looking for new ones), oldest first."""
        self.raise_if_stopped()
        rewires, self._rewires = self._rewires, []
        return rewires

    def take_checkpoints(self) -> list[Checkpoint | Commit]:
        """The checkpoint requests and commits that came since the last call, oldest first (raises ``Stopped``)."""
        self.raise_if_stopped()
        taken, self._checkpoints = self._checkpoints, []
        return taken

    @property
    def has_checkpoints(self) -> bool:
        """True if a checkpoint request or a commit waits (without looking at the socket)."""
        return bool(self._checkpoints)

    def wait_for(self, kind: type[M], serve: Callable[[], None] | None = None, every_ms: int = 100) -> M:
        """Wait for the next message of type ``kind`` (others are logged and dropped); raises ``Stopped``.

        ``serve`` is called at least every ``every_ms`` while it waits (a
        done replica still resends to restarted peers).
        """
        while True:
            message = self.receive(every_ms if serve is not None else None)
            if isinstance(message, kind):
                return message
            if message is not None:
                log.warning("%s: ignored %r while waiting for %s", self._replica_id, message, kind.__name__)
            if serve is not None:
                serve()

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` (a retry's backoff), raising ``Stopped`` at once if the launcher asks to stop."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.socket.poll(max(1, round(left * 1000))):
                self.raise_if_stopped()

    def raise_if_stopped(self) -> None:
        """Raise ``Stopped`` if the launcher asked to stop; drop anything else waiting."""
        while ready_to_read(self.socket):
            self.receive(0)

    def send(self, message: Message | WatchHandshakes, attachment: Any = None) -> None:
        """Hand ``message`` to the agent (which adds this replica's id and sends it to the launcher)."""
        self.socket.send(serializers.dumps(Outgoing(message, attachment)))

    def detach(self) -> None:
        """Tell the agent the replica is done with the control plane, and close the pipe."""
        self.socket.send(serializers.dumps(Outgoing(Detach())))
        self.socket.close(linger=1000)
