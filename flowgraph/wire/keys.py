"""Stable hashing of by_key keys: the same key picks the same replica in every process.

Python's ``hash`` of str and bytes is salted per process (PYTHONHASHSEED),
so it must never decide where an item goes.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from typing import Any


def key_bytes(key: Any) -> bytes:
    """A byte string that identifies ``key`` by type and value, the same in every process."""
    if isinstance(key, str):
        return b"s" + key.encode("utf-8", "surrogatepass")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return b"b" + bytes(key)
    if isinstance(key, bool) or key is None:
        return b"c" + repr(key).encode()
    if isinstance(key, int):
        return b"i" + str(key).encode()
    if isinstance(key, float):
        return b"f" + struct.pack("!d", key)
    if isinstance(key, tuple):
        parts = [key_bytes(part) for part in key]
        return b"t" + b"".join(struct.pack("!I", len(part)) + part for part in parts)
    return b"p" + pickle.dumps(key, protocol=5)


def replica_for_key(key: Any, replicas: int) -> int:
    """The consumer replica (0..replicas-1) that gets items with ``key``."""
    return zlib.crc32(key_bytes(key)) % replicas
