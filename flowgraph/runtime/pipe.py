"""The replica thread's end of its control pipe: an inproc PAIR socket to its agent.

The agent (``runtime.agent``) owns the connection to the launcher and
forwards messages both ways; the replica thread only ever talks to the pipe.
Both ends live in one process, so messages cross it pickled as they are.
A ``Stop`` from the launcher is raised as ``Stopped`` wherever the replica
looks at the pipe, which it does whenever it waits for anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TypeVar

import zmq

from ..wire import serializers
from ..wire.control import Message, Stop
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

    def receive(self, timeout_ms: int | None) -> Message | None:
        """The next message from the launcher, or None on timeout; raises ``Stopped`` on a stop."""
        if not self.socket.poll(timeout_ms):
            return None
        message = self.socket.recv_pyobj()
        if isinstance(message, Stop):
            raise Stopped(message.reason)
        return message  # type: ignore[no-any-return]  # the agent sends only Messages

    def wait_for(self, kind: type[M]) -> M:
        """Wait for the next message of type ``kind`` (others are logged and dropped); raises ``Stopped``."""
        while True:
            message = self.receive(None)
            if isinstance(message, kind):
                return message
            log.warning("%s: ignored %r while waiting for %s", self._replica_id, message, kind.__name__)

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
