"""One template process per host, ``python -m flowgraph forkserver``, from which that host's replicas are forked.

A fresh interpreter costs about 0.4 s of CPU importing flowgraph, ZeroMQ,
asyncio and cloudpickle; a fork of one that has imported them costs a few
milliseconds and shares its pages. The template never makes a ZeroMQ context
or a thread, so every fork starts clean. It also imports the modules the
node code refers to (read from the pickles' opcodes, never by loading them,
which would run user code), to share them too; if that starts a thread, it
stops forking and starts each replica as a fresh ``python -m flowgraph worker``
instead.

The launcher talks to the template over its stdin and stdout (a pipe, the
ssh channel, or the Slurm step's), in frames of a length and a msgpack list:

- to the template: ``["run", shared]`` once (the pickled ``Shared`` parts of
  every replica's configuration), ``["spawn", replica, incarnation,
  config]`` (a pickled ``WorkerConfig`` without those parts; a replica that
  runs already is killed first), ``["kill", replica]``;
- from it: ``["ready", pid]``, ``["out", replica, incarnation, stream,
  bytes]`` (stream 1 or 2, as the replica wrote it), ``["exit", replica,
  incarnation, status]`` (after its output; a negative status is the signal
  that killed it).

Each replica's stdin is a pipe only the template writes: its lifeline, as
stdin is for a worker the launcher starts itself. When the launcher's end
closes (the launcher died, ssh or the step ended), the template kills every
replica with SIGKILL and exits. When the launcher is there but silent (it
is stopped, or cut off), the replicas give it up one by one (exit status
``LAUNCHER_GONE``); once none runs and none is started for a while, the
template gives it up too. One replica that gave up alone (it was stopped
itself) is only restarted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import os
import pickle
import pickletools
import selectors
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import setproctitle

from .bootstrap import LAUNCHER_GONE, encode_config, run_worker  # the worker's modules, imported once for all forks
from .config import WorkerConfig

_LENGTH = struct.Struct("!I")
_EXIT_WAIT_S = 1.0
"""How long an ended replica's output pipes may stay open (a child of it holds them) before its exit is reported."""
_GONE_WAIT_S = 5.0
"""How long the template waits, once its last replica gave the launcher up, for a replica to start before it
gives the launcher up too (a launcher that is there restarts a lost replica at once)."""


def frame(*message: Any) -> bytes:
    """One frame: a length, then ``message`` as a msgpack list."""
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return _LENGTH.pack(len(body)) + body


class Frames:
    """Splits a byte stream into the messages of its frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[list[Any]]:
        self._buffer += data
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                return
            body = bytes(self._buffer[_LENGTH.size:end])
            del self._buffer[:end]
            yield msgpack.unpackb(body, raw=False)


@dataclass(frozen=True)
class Shared:
    """The parts of a configuration every replica of a run shares: sent to a template once, not per replica."""

    plan: bytes
    nodes: Mapping[str, bytes]
    sources: Mapping[str, str] = field(default_factory=dict)
    sys_path: tuple[str, ...] = ()

    def strip(self, config: WorkerConfig) -> WorkerConfig:
        """``config`` without what this holds, for the wire."""
        return dataclasses.replace(config, plan=b"", code=b"", sources={})

    def complete(self, config: WorkerConfig) -> WorkerConfig:
        """A stripped ``config`` made whole again."""
        return dataclasses.replace(config, plan=self.plan, code=self.nodes[config.node], sources=self.sources)


@dataclass
class _Child:
    replica: str
    incarnation: int
    pid: int
    lifeline: int
    """The write end of its stdin."""
    pipes: dict[int, int]
    """Its stdout and stderr read ends, fd -> stream number."""
    process: subprocess.Popen[bytes] | None = None
    status: int | None = None
    ended_at: float = 0.0


_STRINGS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})
_GETS = frozenset({"BINGET", "LONG_BINGET", "GET"})
_PUTS = frozenset({"BINPUT", "LONG_BINPUT", "PUT"})


def referenced_modules(blob: bytes) -> set[str]:
    """The modules a pickle imports when loaded: of its globals, and those cloudpickle's ``subimport`` loads.

    Read from its opcodes without loading it, following only what a global
    and a call of ``subimport`` push (memoized values included).
    """
    modules: set[str] = set()
    try:
        _follow(pickletools.genops(blob), modules)
    except ValueError:  # not a whole pickle: what it names so far
        pass
    return {module for module in modules if module and module != "__main__" and module.isascii()}


def _follow(opcodes: Iterator[tuple[Any, Any, Any]], modules: set[str]) -> None:
    pushed: list[Any] = []
    memo: dict[int, Any] = {}
    for opcode, argument, _ in opcodes:
        name = opcode.name
        top = pushed[-1] if pushed else None
        if name in _STRINGS:
            pushed.append(argument)
        elif name in _GETS:
            pushed.append(memo.get(int(argument)))
        elif name == "MEMOIZE":
            memo[len(memo)] = top
        elif name in _PUTS:
            memo[int(argument)] = top
        elif name in ("STACK_GLOBAL", "GLOBAL"):
            module, attribute = str(argument).split(" ", 1) if name == "GLOBAL" else (None, None)
            if name == "STACK_GLOBAL" and len(pushed) > 1:
                module, attribute = pushed[-2:]
                del pushed[-2:]
            if isinstance(module, str):
                modules.add(module)
            pushed.append(_Subimport() if module and str(module).startswith("cloudpickle") and
                          attribute in ("subimport", "dynamic_subimport") else None)
        elif name == "TUPLE1" and pushed:
            pushed[-1] = (top,)
        elif name == "REDUCE" and len(pushed) > 1:
            if isinstance(pushed[-2], _Subimport) and isinstance(top, tuple) and top and isinstance(top[0], str):
                modules.add(top[0])
            pushed[-2:] = [None]
        else:
            pushed.append(None)


class _Subimport:
    """What ``referenced_modules`` pushes for cloudpickle's ``subimport``."""


def thread_count() -> int:
    """The threads of this process (the kernel's count: C libraries' threads too)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


class Template:
    """The template's loop: frames from the launcher on fd 0, frames to it on ``out``."""

    def __init__(self, out: int) -> None:
        self._out = out
        self._selector = selectors.DefaultSelector()
        self._children: dict[int, _Child] = {}
        self._current: dict[str, _Child] = {}
        self._shared: Shared | None = None
        self._fork = True
        self._gone_at: float | None = None
        """When its last running replica gave the launcher up (None: one runs, or ended otherwise)."""
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        signal.set_wakeup_fd(self._wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self._selector.register(0, selectors.EVENT_READ, "stdin")
        self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")

    def serve(self) -> int:
        self._send("ready", os.getpid())
        frames = Frames()
        while True:
            for key, _ in self._selector.select(self._timeout()):
                if key.data == "stdin":
                    data = os.read(0, 1 << 20)
                    if not data:
                        return self._end()
                    for message in frames.feed(data):
                        self._handle(message)
                elif key.data == "wake":
                    os.read(self._wake_read, 4096)
                else:
                    self._forward(key.fd, key.data)
            self._reap()
            if self._gone_at is not None and time.monotonic() - self._gone_at > _GONE_WAIT_S:
                return self._end()

    def _handle(self, message: list[Any]) -> None:
        verb, *args = message
        if verb == "run":
            self._prepare(pickle.loads(args[0]))
        elif verb == "spawn":
            try:
                self._spawn(args[0], args[1], pickle.loads(args[2]))
            except Exception:  # the replica cannot start: say why, as its own output, and that it ended
                self._send("out", args[0], args[1], 2, traceback.format_exc().encode())
                self._send("exit", args[0], args[1], 1)
        elif verb == "kill":
            child = self._current.get(args[0])
            if child is not None and child.status is None:
                _kill(child.pid)

    def _prepare(self, shared: Shared) -> None:
        """Import the modules the node code refers to, once, here (never unpickle it: that runs user code)."""
        self._shared = shared
        for path in reversed(shared.sys_path):
            if path not in sys.path:
                sys.path.insert(0, path)
        for module in sorted(set().union(*map(referenced_modules, (shared.plan, *shared.nodes.values())))):
            with contextlib.suppress(Exception):  # a replica that needs it reports the error itself
                importlib.import_module(module)
        gc.freeze()  # what is imported now stays out of the collector's way: forks share its pages, uncopied
        threads = thread_count()
        if threads > 1:
            self._fork = False
            print(f"flowgraph forkserver: importing the node code started {threads - 1} thread(s); replicas start "
                  "as fresh interpreters instead of forks", file=sys.stderr, flush=True)

    def _spawn(self, replica: str, incarnation: int, stripped: WorkerConfig) -> None:
        assert self._shared is not None, "the launcher sends the run before any replica"
        self._gone_at = None
        old = self._current.get(replica)
        if old is not None and old.status is None:
            _kill(old.pid)
        config = self._shared.complete(stripped)
        lifeline_read, lifeline = os.pipe()
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        process = None
        if self._fork:
            pid = os.fork()
            if pid == 0:
                _become_worker(config, lifeline_read, out_write, err_write)
        else:
            process = subprocess.Popen([sys.executable, "-u", "-m", "flowgraph", "worker"], stdin=lifeline_read,
                                       stdout=out_write, stderr=err_write)
            pid = process.pid
            _write_all(lifeline, encode_config(config))
        for fd in (lifeline_read, out_write, err_write):
            os.close(fd)
        child = _Child(replica, incarnation, pid, lifeline, {out_read: 1, err_read: 2}, process)
        self._children[pid] = child
        self._current[replica] = child
        for fd in child.pipes:
            self._selector.register(fd, selectors.EVENT_READ, child)

    def _forward(self, fd: int, child: _Child) -> None:
        data = os.read(fd, 65536)
        if data:
            self._send("out", child.replica, child.incarnation, child.pipes[fd], data)
            return
        self._close_pipe(child, fd)
        self._report(child)

    def _close_pipe(self, child: _Child, fd: int) -> None:
        self._selector.unregister(fd)
        os.close(fd)
        del child.pipes[fd]

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            child = self._children.get(pid)
            if child is None:
                continue
            child.status = os.waitstatus_to_exitcode(status)
            child.ended_at = time.monotonic()
            if child.process is not None:
                child.process.returncode = child.status
            self._report(child)
        now = time.monotonic()
        for child in list(self._children.values()):
            if child.status is not None and now - child.ended_at > _EXIT_WAIT_S:
                for fd in list(child.pipes):
                    self._close_pipe(child, fd)
                self._report(child)

    def _report(self, child: _Child) -> None:
        """Tell the launcher a replica ended, once it has and its output has all been sent."""
        if child.status is None or child.pipes:
            return
        os.close(child.lifeline)
        del self._children[child.pid]
        if self._current.get(child.replica) is child:
            del self._current[child.replica]
        self._send("exit", child.replica, child.incarnation, child.status)
        running = any(other.status is None for other in self._children.values())
        if child.status == LAUNCHER_GONE and not running:
            self._gone_at = time.monotonic()

    def _timeout(self) -> float | None:
        deadlines = [child.ended_at + _EXIT_WAIT_S for child in self._children.values() if child.status is not None]
        if self._gone_at is not None:
            deadlines.append(self._gone_at + _GONE_WAIT_S)
        return max(0.0, min(deadlines) - time.monotonic()) + 0.01 if deadlines else None

    def _end(self) -> int:
        """The launcher's end closed: kill every replica, report them if it still listens, exit."""
        for child in self._children.values():
            if child.status is None:
                _kill(child.pid)
        while self._children:
            self._reap()
            if self._children:
                for key, _ in self._selector.select(0.05):
                    if isinstance(key.data, _Child):
                        self._forward(key.fd, key.data)
        return 0

    def _send(self, *message: Any) -> None:
        with contextlib.suppress(BrokenPipeError):  # the launcher is gone: _end follows
            _write_all(self._out, frame(*message))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _become_worker(config: WorkerConfig, lifeline: int, out: int, err: int) -> None:
    """In the forked child: the lifeline as stdin, the pipes as stdout and stderr, then the replica; never returns."""
    code = 1
    try:
        os.dup2(lifeline, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        setproctitle.setproctitle(f"flowgraph worker {config.replica_id}")  # what ps shows
        code = run_worker(config)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main() -> int:
    """``python -m flowgraph forkserver``: serve the launcher on stdin and stdout until stdin closes."""
    os.environ["SPT_NOENV"] = "1"  # setproctitle keeps /proc/PID/environ; titles fit in the command line
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when we stop
    out = os.dup(1)
    os.dup2(2, 1)  # what user code prints while it is imported goes to stderr, never into the frames
    return Template(out).serve()
