"""Batches to payload frames and back: pickle protocol 5, msgpack, JSON.

Bytes in, bytes out; no sockets here. Only ``wire``-checked frames (the
run's token in the header) ever reach ``decode_items``: unpickling is code
execution.

pickle sends large buffers out of band, as frames of their own that are
never copied into the pickle: numpy arrays and anything else that pickles
through ``PickleBuffer``, memoryviews, and ``bytes`` and ``bytearray`` objects
that are items of a small batch or values of such an item's dict, list or
tuple (a batch is small when its items are large: ``batch_bytes`` limits
it). Buffers under ``OUT_OF_BAND_BYTES`` stay in the pickle, where they are
cheaper than a frame. A ``bytes`` or ``bytearray`` item arrives as its own
type (copied out of the frame once); a memoryview arrives as a read-only
memoryview of the same format and shape, over the received frame.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import cloudpickle
import msgpack

from ..settings import SERIALIZERS

OUT_OF_BAND_BYTES = 64 * 1024
"""Buffers from this size travel as frames of their own (pyzmq copies smaller frames anyway)."""
_LIFT_MAX_ITEMS = 16
"""Batches of at most this many items are searched for large ``bytes``/``bytearray`` to send out of band."""
_BYTES_TYPES = (bytes, bytearray)


class _Pickler(cloudpickle.Pickler):
    """cloudpickle's Pickler that can pickle memoryviews (out of band when large)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is memoryview:
            return _view_from, (pickle.PickleBuffer(obj if obj.contiguous else obj.tobytes()), obj.format,
                                obj.shape)
        return super().reducer_override(obj)


def _view_from(buffer: Any, format: str, shape: tuple[int, ...]) -> memoryview:
    view = memoryview(buffer).toreadonly()
    if view.format == format and view.shape == shape:
        return view
    cast: memoryview = view.cast("B").cast(format, shape)  # type: ignore[call-overload]  # any struct format
    return cast


def dumps(obj: Any) -> bytes:
    """``obj`` pickled in one piece, as the data path would pickle it (memoryviews too)."""
    file = io.BytesIO()
    _Pickler(file, protocol=5).dump(obj)
    return file.getvalue()


class _OutOfBand:
    """Stands in for a large ``bytes``/``bytearray`` while pickling, so its buffer leaves the pickle."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __reduce__(self) -> Any:
        return type(self.data), (pickle.PickleBuffer(self.data),)


def _is_large(value: Any) -> bool:
    return type(value) in _BYTES_TYPES and len(value) >= OUT_OF_BAND_BYTES


def _lift(item: Any) -> Any:
    """``item`` with its large bytes (itself, or its dict values, list or tuple elements) marked out of band."""
    kind = type(item)
    if kind in _BYTES_TYPES:
        return _OutOfBand(item) if len(item) >= OUT_OF_BAND_BYTES else item
    if kind is dict and any(map(_is_large, item.values())):
        return {key: _OutOfBand(value) if _is_large(value) else value for key, value in item.items()}
    if (kind is list or kind is tuple) and any(map(_is_large, item)):
        return kind(_OutOfBand(value) if _is_large(value) else value for value in item)
    return item


class PickleEncoder:
    """Pickles the batches of one edge into payload frames: the pickle, then its out-of-band buffers.

    One Pickler is reused over a memory file, which makes a batch of small
    items cheaper than ``pickle.dumps`` (no pickler set up per batch) while
    keeping cloudpickle's by-value pickling of the topology's own classes
    and functions. A pickle larger than ``REUSE_BYTES`` leaves with its
    memory file (no copy) and the next batch gets a fresh one.
    """

    REUSE_BYTES = 1 << 20

    def __init__(self) -> None:
        self._buffers: list[memoryview] = []
        self._start()

    def _start(self) -> None:
        self._file = io.BytesIO()
        self._pickler = _Pickler(self._file, protocol=5, buffer_callback=self._keep)

    def _keep(self, buffer: pickle.PickleBuffer) -> bool:
        """Pickle's buffer callback: small buffers stay in the pickle (True), large ones become frames."""
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND_BYTES:
            return True
        self._buffers.append(raw)
        return False

    def encode(self, items: list[Any]) -> list[Any]:
        """The payload frames of ``items``; raises what pickling raises (``PicklingError``, ``TypeError``)."""
        batch = list(map(_lift, items)) if len(items) <= _LIFT_MAX_ITEMS else items
        try:
            self._pickler.dump(batch)
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
        frames = [payload, *self._buffers]
        self._buffers.clear()
        return frames


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
    items: list[Any]
    if serializer == 0:
        items = pickle.loads(frames[0], buffers=frames[1:])
    elif serializer == 1:
        items = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
    else:
        items = json.loads(bytes(frames[0]))
    return items
