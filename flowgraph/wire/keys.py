"""Stable hashing of by_key keys: the same key picks the same replica in every process.

Python's ``hash`` of str and bytes is salted per process (PYTHONHASHSEED),
so it must never decide where an item goes. A key's 64-bit hash is the
first 8 bytes of its BLAKE2b digest; its replica comes from jump
consistent hashing (Lamping and Veach, 2014), so when a node grows from
n to n + 1 replicas only about 1/(n + 1) of the keys move (each to the new
replica), which is what lets ``--resume`` rescale keyed state.
"""

from __future__ import annotations

import pickle
import struct
from hashlib import blake2b
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


_MASK = (1 << 64) - 1
_LCG = 2862933555777941757


def key_hash(key: Any) -> int:
    """A 64-bit hash of ``key``, the same in every process and on every host."""
    return int.from_bytes(blake2b(key_bytes(key), digest_size=8).digest(), "big")


def jump(hash64: int, buckets: int) -> int:
    """Jump consistent hash: the bucket (0..buckets-1) of ``hash64``.

    >>> [jump(h, 1) for h in (0, 1, 2**63)]
    [0, 0, 0]
    """
    chosen, candidate = -1, 0
    while candidate < buckets:
        chosen = candidate
        hash64 = (hash64 * _LCG + 1) & _MASK
        candidate = int((chosen + 1) * ((1 << 31) / ((hash64 >> 33) + 1)))
    return chosen


def replica_for_key(key: Any, replicas: int) -> int:
    """The consumer replica (0..replicas-1) that gets items with ``key``."""
    return jump(key_hash(key), replicas)
