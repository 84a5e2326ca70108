"""Frames on the wire: data batches, end of stream and control messages.

Bytes in, bytes out; no sockets here.

A data message is ``[header, payload, *buffers]``. The header is fixed size:
magic, the run's token, kind, serializer, producer (node index, replica), a
sequence number per producer socket and an item count. The payload is the
batch (a list of items) encoded by the edge's serializer: pickle protocol 5
(large buffers — bytearray, memoryview, numpy arrays — travel out of band as
extra frames, never copied into the pickle), msgpack or JSON. Unpickling is
code execution: ``decode_header`` checks magic, length and token before
anything else is looked at, and ``decode_items`` is only called on frames
whose header passed.

A control message is ``[header, kind, json body]`` with an optional fourth
frame holding a pickled attachment (collected sink items for
``flowgraph.testing``), again only decoded after the header passed.
"""

from __future__ import annotations

import enum
import hmac
import io
import json
import pickle
import struct
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Protocol, Sequence

import cloudpickle
import msgpack

from .settings import SERIALIZERS

DATA_MAGIC = b"FGD1"
CONTROL_MAGIC = b"FGC1"
TOKEN_BYTES = 16

_DATA_HEADER = struct.Struct("!4s16sBBHHQI")


class Kind(enum.IntEnum):
    """What a data message carries."""

    BATCH = 1
    EOS = 2


_KINDS = {int(kind): kind for kind in Kind}


@dataclass(frozen=True)
class Header:
    """The checked header of a data message."""

    kind: Kind
    serializer: int
    """How the payload is encoded: the index of its name in ``SERIALIZERS``."""
    node: int
    """Index of the producer's node in the plan."""
    replica: int
    seq: int
    """Sequence number of this message on its producer socket, from 0."""
    count: int
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
    if kind not in _KINDS or serializer >= len(SERIALIZERS):
        return None
    return Header(_KINDS[kind], serializer, node, replica, seq, count)


class PickleEncoder:
    """Pickles the batches of one edge into payload frames: the pickle, then its out-of-band buffers.

    One cloudpickle Pickler is reused over a memory file, which makes a
    batch of small items cheaper than ``pickle.dumps`` (no pickler set up per
    batch) while keeping cloudpickle's by-value pickling of the topology's
    own classes and functions. A pickle larger than ``REUSE_BYTES`` leaves
    with its memory file (no copy) and the next batch gets a fresh one.
    """

    REUSE_BYTES = 1 << 20

    def __init__(self) -> None:
        self._buffers: list[pickle.PickleBuffer] = []
        self._start()

    def _start(self) -> None:
        self._file = io.BytesIO()
        self._pickler = cloudpickle.Pickler(self._file, protocol=5, buffer_callback=self._buffers.append)

    def encode(self, items: list[Any]) -> list[Any]:
        """The payload frames of ``items``; raises what pickling raises (``PicklingError``, ``TypeError``)."""
        try:
            self._pickler.dump(items)
        except BaseException:
            self._buffers.clear()
            self._start()
            raise
        if self._file.tell() <= self.REUSE_BYTES:
            payload: Any = self._file.getvalue()
            self._file.seek(0)
            self._file.truncate()
            self._pickler.clear_memo()
        else:
            payload = self._file.getbuffer()
            self._start()
        frames = [payload, *(buffer.raw() for buffer in self._buffers)]
        self._buffers.clear()
        return frames


def frames_size(frames: Sequence[Any]) -> int:
    """Total bytes of ``frames`` (bytes, memoryviews or zmq Frames)."""
    return sum(memoryview(frame).nbytes for frame in frames)


class MsgpackEncoder:
    """msgpack: compact and fast for dicts, lists, str, bytes and numbers (tuples come back as lists)."""

    def encode(self, items: list[Any]) -> list[Any]:
        return [msgpack.packb(items, use_bin_type=True)]


class JsonEncoder:
    """JSON: readable, for dicts, lists, str and numbers (no bytes; tuples come back as lists)."""

    def encode(self, items: list[Any]) -> list[Any]:
        return [json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode()]


class Encoder(Protocol):
    """Turns a batch into payload frames."""

    def encode(self, items: list[Any]) -> list[Any]: ...


ENCODERS: dict[str, Callable[[], Encoder]] = {
    "pickle": PickleEncoder, "msgpack": MsgpackEncoder, "json": JsonEncoder,
}


def serializer_id(name: str) -> int:
    """The number the header carries for serializer ``name``."""
    return SERIALIZERS.index(name)


def decode_items(serializer: int, frames: Sequence[Any]) -> list[Any]:
    """The items of a batch from its payload frames (only after the header was checked)."""
    if serializer == 0:
        return pickle.loads(frames[0], buffers=frames[1:])
    if serializer == 1:
        return msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
    return json.loads(bytes(frames[0]))


def encode_control(token: bytes, kind: str, body: dict[str, Any], attachment: Any = None) -> list[bytes]:
    """A control message; ``attachment`` (any picklable object) is optional."""
    frames = [CONTROL_MAGIC + token, kind.encode(), json.dumps(body).encode()]
    if attachment is not None:
        frames.append(cloudpickle.dumps(attachment, protocol=5))
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
