"""CURVE for runs that leave this machine: per-run keys, authenticated and encrypted sockets.

The launcher makes two keypairs per run: one for every socket that binds
(the server side of CURVE), one for every socket that connects (the client
side). Workers get them on stdin, over ssh; they never appear on a command
line or on disk. A bound socket only completes a handshake with a peer that
knows the server public key and proves the run's client key (checked by a
ZAP handler in each process), so a stranger gets nothing and can send
nothing. The per-run token inside every message is still checked as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import zmq
from zmq.auth.thread import ThreadAuthenticator

_DOMAIN = "flowgraph"


@dataclass(frozen=True)
class Curve:
    """The run's two CURVE keypairs (Z85 bytes, as ``zmq.curve_keypair`` makes them)."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def generate(cls) -> Curve:
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return cls(server_public, server_secret, client_public, client_secret)

    def serve(self, socket: zmq.Socket) -> None:
        """Make ``socket`` (before it binds) accept only peers holding the run's client key."""
        socket.curve_server = True
        socket.curve_secretkey = self.server_secret
        socket.curve_publickey = self.server_public
        socket.zap_domain = _DOMAIN.encode()

    def connect(self, socket: zmq.Socket) -> None:
        """Make ``socket`` (before it connects) authenticate with the run's client key."""
        socket.curve_serverkey = self.server_public
        socket.curve_publickey = self.client_public
        socket.curve_secretkey = self.client_secret


class _RunClientOnly:
    def __init__(self, client_public: bytes) -> None:
        self._client_public = client_public

    def callback(self, domain: str, client_key: bytes) -> bool:
        return client_key == self._client_public


def start_authenticator(context: zmq.Context, curve: Curve) -> ThreadAuthenticator:
    """The ZAP handler of ``context`` (one per process): only the run's client key passes."""
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve_callback(_DOMAIN, credentials_provider=_RunClientOnly(curve.client_public))
    return authenticator
