"""Frames on the wire: data batches, end of stream and control messages.

Bytes in, bytes out; no sockets here (payloads come from ``serializers``).

A data message is ``[header + payload]`` when the payload is one frame of
up to ``INLINE_BYTES`` (a batch of small items: one frame to send, receive
and check), else ``[header, payload, *buffers]``. The header is fixed
size: magic, the run's token, kind, serializer, producer (node index,
replica), a sequence number per producer socket and an item count. A
credit message (consumer to producer) is a header alone.
Unpickling is code execution: ``decode_header`` checks magic, length and
token before anything else is looked at, and payloads are only decoded
for messages whose header passed.

A control message is ``[header, kind, json body]`` with an optional fourth
frame holding a pickled attachment (collected sink items for
``flowgraph.testing``), again only decoded after the header passed.
"""

from __future__ import annotations

import enum
import hmac
import json
import pickle
import struct
from typing import Any, NamedTuple, Sequence

from . import serializers
from .settings import SERIALIZERS

DATA_MAGIC = b"FGD1"
CONTROL_MAGIC = b"FGC1"
TOKEN_BYTES = 16

_DATA_HEADER = struct.Struct("!4s16sBBHHQI")
HEADER_BYTES = _DATA_HEADER.size


class Kind(enum.IntEnum):
    """What a data message carries."""

    BATCH = 1
    EOS = 2
    CREDIT = 3
    """Consumer to producer: send me ``items`` more (the header's node and replica name the consumer)."""


class Header(NamedTuple):
    """The checked header of a data message."""

    kind: int
    """A ``Kind``."""
    serializer: int
    """How the payload is encoded: the index of its name in ``SERIALIZERS``."""
    node: int
    """Index of the producer's node in the plan."""
    replica: int
    seq: int
    """Sequence number of this message on its producer socket, from 0."""
    items: int
    """Items in the batch (0 for end of stream)."""


def topic(token: bytes) -> bytes:
    """The prefix every data message of a run starts with (SUB sockets subscribe to it)."""
    return DATA_MAGIC + token


def encode_header(token: bytes, kind: Kind, serializer: int, node: int, replica: int, seq: int,
                  count: int) -> bytes:
    return _DATA_HEADER.pack(DATA_MAGIC, token, kind, serializer, node, replica, seq, count)


def decode_header(token: bytes, frame: bytes | memoryview) -> Header | None:
    """The header if ``frame`` is a well-formed header of this run, else None."""
    if len(frame) != _DATA_HEADER.size:
        return None
    magic, frame_token, kind, serializer, node, replica, seq, count = _DATA_HEADER.unpack(frame)
    if magic != DATA_MAGIC or not hmac.compare_digest(frame_token, token):
        return None
    if kind not in (Kind.BATCH, Kind.EOS, Kind.CREDIT) or serializer >= len(SERIALIZERS):
        return None
    return Header(kind, serializer, node, replica, seq, count)


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


def encode_control(token: bytes, kind: str, body: dict[str, Any], attachment: Any = None) -> list[bytes]:
    """A control message; ``attachment`` (any picklable object) is optional."""
    frames = [CONTROL_MAGIC + token, kind.encode(), json.dumps(body).encode()]
    if attachment is not None:
        frames.append(serializers.dumps(attachment))
    return frames


def decode_control(token: bytes, frames: Sequence[bytes]) -> tuple[str, dict[str, Any], Any] | None:
    """(kind, body, attachment) of a control message of this run, else None."""
    if len(frames) not in (3, 4):
        return None
    header = bytes(frames[0])
    if len(header) != len(CONTROL_MAGIC) + TOKEN_BYTES or not header.startswith(CONTROL_MAGIC):
        return None
    if not hmac.compare_digest(header[len(CONTROL_MAGIC):], token):
        return None
    try:
        kind = bytes(frames[1]).decode()
        body = json.loads(bytes(frames[2]))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    attachment = pickle.loads(frames[3]) if len(frames) == 4 else None
    return kind, body, attachment
