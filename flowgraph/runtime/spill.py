"""A first-in first-out queue of messages that overflows to disk: what a feedback edge cannot send yet.

A loop's feedback edge must never block its producer (every cycle of
blocked sends would be a deadlock), so the messages its consumer has no
room for wait here: in memory up to ``budget_bytes``, then in an unnamed
temporary file (``tempfile.TemporaryFile``: gone when closed, or when the
process dies). Once a message went to disk, every later one goes there too
until the file is read empty, so the order is kept. Frames are written as
``<frame count>`` then ``<length><bytes>`` per frame, and read back in turn;
an emptied file is truncated.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections import deque
from collections.abc import Sequence
from typing import IO, Any

_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")


class Spill:
    """Messages (lists of frames) waiting for room, oldest first."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._memory: deque[tuple[list[Any], int]] = deque()
        self.memory_bytes = 0
        """What the messages held in memory take."""
        self._file: IO[bytes] | None = None
        self._read_at = 0
        self._write_at = 0
        self.on_disk = 0
        """Messages in the file."""
        self.spilled = 0
        """Messages that ever went to disk."""

    def __len__(self) -> int:
        return len(self._memory) + self.on_disk

    @property
    def disk_bytes(self) -> int:
        """What the messages in the file take there."""
        return self._write_at - self._read_at

    def push(self, frames: Sequence[Any]) -> bool:
        """Queue a message behind the others; True if it went to disk."""
        size = sum(memoryview(frame).nbytes for frame in frames)
        if not self.on_disk and self.memory_bytes + size <= self.budget_bytes:
            self._memory.append((list(frames), size))
            self.memory_bytes += size
            return False
        self._write(frames)
        return True

    def peek(self) -> list[Any] | None:
        """The oldest message, left in place (None when empty); a message on disk is read into memory."""
        if not self._memory and self.on_disk:
            frames = self._read()
            self._memory.append((frames, sum(len(frame) for frame in frames)))
            self.memory_bytes += self._memory[-1][1]
        return self._memory[0][0] if self._memory else None

    def pop(self) -> None:
        """Drop the oldest message (the one ``peek`` gave)."""
        _, size = self._memory.popleft()
        self.memory_bytes -= size

    def close(self) -> None:
        """Drop everything, and the file."""
        self._memory.clear()
        self.memory_bytes = 0
        if self._file is not None:
            self._file.close()
            self._file = None
        self.on_disk = self._read_at = self._write_at = 0

    def _write(self, frames: Sequence[Any]) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="flowgraph-spill-")
        parts: list[bytes | memoryview] = [_COUNT.pack(len(frames))]
        for frame in frames:
            data = memoryview(frame).cast("B")
            parts += [_LENGTH.pack(data.nbytes), data]
        record = memoryview(b"".join(parts))
        while record:  # a regular file takes it whole, unless the disk is full (then OSError)
            written = os.pwrite(self._file.fileno(), record, self._write_at)
            self._write_at += written
            record = record[written:]
        self.on_disk += 1
        self.spilled += 1

    def _read(self) -> list[bytes]:
        assert self._file is not None
        descriptor = self._file.fileno()
        (count,) = _COUNT.unpack(os.pread(descriptor, _COUNT.size, self._read_at))
        position = self._read_at + _COUNT.size
        frames = []
        for _ in range(count):
            (length,) = _LENGTH.unpack(os.pread(descriptor, _LENGTH.size, position))
            frames.append(os.pread(descriptor, length, position + _LENGTH.size))
            position += _LENGTH.size + length
        self._read_at = position
        self.on_disk -= 1
        if not self.on_disk:
            self._file.truncate(0)
            self._read_at = self._write_at = 0
        return frames
