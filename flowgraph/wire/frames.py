"""Frames on the wire: data batches, end of stream, checkpoint barriers, credit and broadcast subscriptions.

Bytes in, bytes out; no sockets here (payloads come from ``serializers``).

A data message is ``[header + payload]`` when the payload is one frame of
up to ``INLINE_BYTES`` (a batch of small items: one frame to send, receive
and check), else ``[header, payload, *buffers]``. The header is fixed
size: magic, the run's token, kind, serializer, the sender (node index,
replica, port: which of the node's streams, and incarnation: which start
of the replica), a sequence number per producer socket and an item count.
A credit message (consumer to producer) is a header alone, naming the
consumer.
Unpickling is code execution: ``decode_header`` checks magic, length and
token before anything else is looked at, and payloads are only decoded
for messages whose header passed.

A broadcast consumer subscribes twice on its SUB socket: to ``topic``
(every data message of the run) and then to its ``identification``, which
tells the producer which replica it is; subscriptions without the run's
token are ignored. Control messages are in ``wire.control``.
"""

from __future__ import annotations

import enum
import hmac
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..settings import SERIALIZERS

DATA_MAGIC = b"FGD1"
TOKEN_BYTES = 16
SUBSCRIBE = b"\x01"
"""First byte of a subscription message arriving at an XPUB socket."""
IDENT_MAGIC = b"FGS1"

_DATA_HEADER = struct.Struct("!4s16sBBHHBHQI")
HEADER_BYTES = _DATA_HEADER.size


Sender = tuple[int, int, int]
"""(node index, replica, port) of a data message's sender: ``Header.sender``."""


class Kind(enum.IntEnum):
    """What a data message carries."""

    BATCH = 1
    EOS = 2
    CREDIT = 3
    """Consumer to producer: send me ``items`` more (the header's node and replica name the consumer)."""
    ACK = 4
    """Consumer to producer, with restarts: I am done with your batches up to ``seq`` of your incarnation ``items``."""
    POISON = 5
    """A one-item batch that was in flight at every one of its consumer's last deaths: not to be processed again."""
    BARRIER = 6
    """The barrier of checkpoint ``items`` (its id): what came before it on this socket belongs to that checkpoint."""


class Header(NamedTuple):
    """The checked header of a data message."""

    kind: int
    """A ``Kind``."""
    serializer: int
    """How the payload is encoded: the index of its name in ``SERIALIZERS``."""
    node: int
    """Index of the sender's node in the plan."""
    replica: int
    port: int
    """Which stream of the sender's node: ``EdgePlan.port`` (0 its items, 1 its dead letters)."""
    incarnation: int
    """Which start of the sender replica (0 the first; a restarted replica counts up)."""
    seq: int
    """Sequence number of this message on its producer socket, from 0."""
    items: int
    """Items in the batch (0 for end of stream)."""

    @property
    def sender(self) -> Sender:
        """(node index, replica, port): what a consumer keeps sequence numbers and end of stream per."""
        return self.node, self.replica, self.port


_KINDS = frozenset(Kind)


def topic(token: bytes) -> bytes:
    """The prefix every data message of a run starts with (SUB sockets subscribe to it)."""
    return DATA_MAGIC + token


def encode_header(token: bytes, kind: Kind, serializer: int, node: int, replica: int, port: int, incarnation: int,
                  seq: int, count: int) -> bytes:
    """The header of a data message (see ``Header`` for each field)."""
    return _DATA_HEADER.pack(DATA_MAGIC, token, kind, serializer, node, replica, port, incarnation, seq, count)


def decode_header(token: bytes, frame: bytes | memoryview) -> Header | None:
    """The header if ``frame`` is a well-formed header of this run, else None."""
    if len(frame) != _DATA_HEADER.size:
        return None
    magic, frame_token, kind, serializer, node, replica, port, incarnation, seq, count = _DATA_HEADER.unpack(frame)
    if magic != DATA_MAGIC or not hmac.compare_digest(frame_token, token):
        return None
    if kind not in _KINDS or serializer >= len(SERIALIZERS):
        return None
    return Header(kind, serializer, node, replica, port, incarnation, seq, count)


INLINE_BYTES = 64 * 1024
"""A payload of one frame up to this size travels in the header's frame: one ZeroMQ frame less."""


def message(header: bytes, payload: list[Any]) -> list[Any]:
    """The frames of a data message: the header with the payload inline when it is one small frame."""
    if len(payload) == 1 and type(payload[0]) is bytes and len(payload[0]) <= INLINE_BYTES:
        return [header + payload[0]]
    return [header, *payload]


def split(frames: Sequence[Any]) -> tuple[memoryview, list[Any]]:
    """(header, payload frames) of a received message (``Frame`` objects), the inverse of ``message``."""
    first = frames[0].buffer
    payload = [frame.buffer for frame in frames[1:]]
    if len(first) > HEADER_BYTES:
        payload.insert(0, first[HEADER_BYTES:])
    return first[:HEADER_BYTES], payload


def frames_size(frames: Sequence[Any]) -> int:
    """Total bytes of ``frames`` (bytes, byte memoryviews or zmq Frames)."""
    return sum(map(len, frames))


def identification(token: bytes, consumer: int) -> bytes:
    """The second subscription of a broadcast consumer: says which replica it is."""
    return IDENT_MAGIC + token + consumer.to_bytes(4, "big")


def identified_consumer(token: bytes, subscription: bytes) -> int | None:
    """The consumer replica a subscription message (``SUBSCRIBE`` + topic) identifies, or None."""
    prefix = SUBSCRIBE + IDENT_MAGIC + token
    if len(subscription) != len(prefix) + 4 or not subscription.startswith(prefix):
        return None
    return int.from_bytes(subscription[-4:], "big")
