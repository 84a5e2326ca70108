"""Socket helpers every part shares: where sockets bind, CURVE, reading without a poll, handshake monitors.

The replica's receiving and sending ends, its agent and the launcher's
coordinator all make their sockets through ``Wiring``, so binding (port 0,
never a hard-coded port), advertised addresses and CURVE are decided once.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import zmq

from ..settings import BufferSettings
from .security import Curve

_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
"""Plain ints: pyzmq's enum flags cost a Python call per ``&``."""
REJECTED_HANDSHAKES = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def ready_to_read(socket: zmq.Socket) -> bool:
    """True if a message waits on ``socket`` (ZMQ_EVENTS as plain ints: cheaper than a poll or zmq.Again)."""
    return bool(socket.get(_EVENTS) & _POLLIN)  # type: ignore[operator]


def recv_frames(socket: zmq.Socket, flags: int) -> list[zmq.Frame]:
    """All frames of the next message (the first one as ``flags`` say, the rest are there already)."""
    frame = socket.recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = socket.recv(zmq.NOBLOCK, copy=False)
        frames.append(frame)
    return frames


def send_frames(socket: zmq.Socket, frames: list[Any], flags: int) -> None:
    """Send a message: a small single frame by copy (cheaper), several frames without copying."""
    if len(frames) == 1:
        socket.send(frames[0], flags)
    else:
        socket.send_multipart(frames, flags, copy=False)


def monitor_handshakes(socket: zmq.Socket) -> str:
    """Report failed handshakes on a bound TCP socket (a stranger sending garbage) to an inproc endpoint.

    libzmq drops such peers itself; the monitor only lets us log them.
    Returns the endpoint to connect a PAIR socket to.
    """
    endpoint = f"inproc://flowgraph-monitor-{uuid.uuid4().hex}"
    socket.monitor(endpoint, REJECTED_HANDSHAKES)
    return endpoint


def describe_rejection(event: Mapping[str, Any]) -> str:
    """A monitor event of ``monitor_handshakes`` in words: ``tcp://...: HANDSHAKE_FAILED_AUTH``."""
    return f"{event['endpoint'].decode()}: {zmq.Event(event['event']).name}"


@dataclass(frozen=True)
class Wiring:
    """How the sockets of one process bind, what they advertise, and their CURVE keys."""

    bind_base: str
    """``tcp://127.0.0.1``, ``tcp://0.0.0.0`` or ``inproc://<run>``."""
    advertise: str | None = None
    """The address peers use instead of the bound one (a host's reachable address)."""
    curve: Curve | None = None
    """The run's keys when it leaves this machine: every TCP socket is then CURVE."""

    @property
    def is_inproc(self) -> bool:
        return self.bind_base.startswith("inproc://")

    def data_socket(self, context: zmq.Context, kind: int, buffers: BufferSettings) -> zmq.Socket:
        """A data socket with the run's buffer limits (HWM must be set before bind/connect)."""
        socket: zmq.Socket = context.socket(kind)
        socket.linger = 1000
        socket.sndhwm = buffers.effective_hwm
        socket.rcvhwm = buffers.effective_hwm
        socket.setsockopt(zmq.SNDBUF, buffers.socket_buffer_bytes)
        socket.setsockopt(zmq.RCVBUF, buffers.socket_buffer_bytes)
        self.secure(socket, serve=kind in (zmq.PULL, zmq.XPUB, zmq.ROUTER))
        return socket

    def back_socket(self, context: zmq.Context, endpoint: str) -> zmq.Socket:
        """A consumer's PUSH to a producer's back socket (credit, acknowledgements): small, never lingering."""
        socket: zmq.Socket = context.socket(zmq.PUSH)
        socket.linger = 0
        self.secure(socket, serve=False)
        socket.connect(endpoint)
        return socket

    def secure(self, socket: zmq.Socket, serve: bool) -> None:
        """Apply CURVE (server side for a socket that binds) if the run uses it."""
        if self.curve is not None:
            (self.curve.serve if serve else self.curve.connect)(socket)

    def bind(self, socket: zmq.Socket, name: str) -> str:
        """Bind to a fresh endpoint and return the endpoint peers should connect to.

        TCP binds to port 0 (the kernel picks a free port, never a
        hard-coded one); inproc binds ``name``, which must be unique in the
        run (a restarted replica's names carry its incarnation).
        """
        if self.is_inproc:
            socket.bind(f"{self.bind_base}/{name}")
            return socket.getsockopt_string(zmq.LAST_ENDPOINT)
        socket.bind(f"{self.bind_base}:0")
        endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if self.advertise is None:
            return endpoint
        return f"tcp://{self.advertise}:{endpoint.rsplit(':', 1)[1]}"
