"""Forward workers' stdout and stderr line by line, prefixed ``[node/replica@host]``, to our stderr.

Both streams go to the launcher's stderr, with the progress view and the
summary: what nodes print is diagnostics about the run; results go to sinks.
"""

from __future__ import annotations

import collections
import os
import selectors
import sys
import threading
import time
from typing import IO

_TAIL_LINES = 20


class OutputForwarder:
    """Whole lines only, never interleaved mid-line: of pipes (one thread reads them all), or fed by forkservers."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._tails: dict[str, collections.deque[str]] = {}
        self._ended: dict[str, list[threading.Event]] = {}
        self._fed: dict[str, dict[int, _Stream]] = {}
        self._wake_read, self._wake_write = os.pipe()
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._open = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="flowgraph-output", daemon=True)
        self._thread.start()

    def follow(self, replica_id: str, label: str, stdout: IO[bytes] | None, stderr: IO[bytes] | None) -> None:
        """Forward the worker's ``stdout`` and ``stderr`` to our stderr, prefixed with ``[label]``."""
        with self._lock:
            self._tails[replica_id] = collections.deque(maxlen=_TAIL_LINES)
            self._ended[replica_id] = []
            for pipe in (stdout, stderr):
                if pipe is not None:
                    stream = _Stream(f"[{label}] ", sys.stderr, self._tails[replica_id])
                    self._ended[replica_id].append(stream.ended)
                    self._selector.register(pipe, selectors.EVENT_READ, stream)
                    self._open += 1
        os.write(self._wake_write, b"x")

    def open(self, replica_id: str, label: str) -> None:
        """Start forwarding what ``feed`` gets for ``replica_id`` (a restarted replica starts a fresh tail)."""
        with self._lock:
            tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
            self._tails[replica_id] = tail
            self._fed[replica_id] = {stream: _Stream(f"[{label}] ", sys.stderr, tail) for stream in (1, 2)}
            self._ended[replica_id] = [stream.ended for stream in self._fed[replica_id].values()]

    def feed(self, replica_id: str, stream: int, data: bytes) -> None:
        """What ``replica_id`` wrote to its stdout (1) or stderr (2), as its forkserver forwarded it."""
        with self._lock:
            self._fed[replica_id][stream].feed(data)

    def end(self, replica_id: str) -> None:
        """``replica_id`` ended: write out its unfinished lines."""
        with self._lock:
            for stream in self._fed.pop(replica_id, {}).values():
                stream.end()

    def tail(self, replica_id: str, wait_s: float = 1.0) -> str:
        """The last lines ``replica_id`` wrote (waiting up to ``wait_s`` for its pipes to close)."""
        deadline = time.monotonic() + wait_s
        for ended in self._ended.get(replica_id, []):
            ended.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            return "".join(self._tails.get(replica_id, ()))

    def close(self) -> None:
        """Wait until every followed pipe reached end of file, then stop."""
        self._closing = True
        os.write(self._wake_write, b"x")
        self._thread.join()
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _run(self) -> None:
        while not (self._closing and self._open == 0):
            for key, _ in self._selector.select():
                if key.data is None:
                    os.read(self._wake_read, 4096)
                    continue
                chunk = os.read(key.fd, 65536)
                if chunk:
                    key.data.feed(chunk)
                    continue
                key.data.end()
                with self._lock:
                    self._selector.unregister(key.fileobj)
                    self._open -= 1
                key.fileobj.close()  # type: ignore[union-attr]  # always a pipe we registered


class _Stream:
    def __init__(self, prefix: str, target: IO[str], tail: collections.deque[str]) -> None:
        self._prefix = prefix
        self._target = target
        self._tail = tail
        self._partial = b""
        self.ended = threading.Event()

    def feed(self, chunk: bytes) -> None:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        self._write(lines)

    def end(self) -> None:
        if self._partial:
            self._write([self._partial])
            self._partial = b""
        self.ended.set()

    def _write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        text = [line.decode("utf-8", "replace") + "\n" for line in lines]
        self._tail.extend(text)
        self._target.write("".join(self._prefix + line for line in text))
        self._target.flush()
