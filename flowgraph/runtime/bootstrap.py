"""The entry of a worker process: ``run_worker`` in a fork of a host's template (``runtime.forkserver``), or
``python -m flowgraph worker`` where the template cannot fork.

The template writes one length-prefixed pickle to the worker's stdin, its
``WorkerConfig`` (token, control endpoint, which replica, the cloudpickled
plan and node, timeouts), and keeps stdin open: when it closes, the
launcher (or the template) is gone and the worker stops (hard exit after ``stop_grace_s`` if
user code does not return). The token never appears on a command line or
on disk.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import sys
import threading
from collections.abc import Callable

import zmq

from .agent import Agent
from .config import WorkerConfig
from .counters import Counters
from .replica import run_configured
from .security import start_authenticator

_LENGTH = struct.Struct("!Q")
LAUNCHER_GONE = 75
"""The exit status of a worker that gave the launcher up (its stdin closed, or its heartbeats stopped): once all
its replicas have, its forkserver gives the launcher up too."""


def encode_config(config: WorkerConfig) -> bytes:
    """What the launcher writes to a worker's stdin."""
    blob = pickle.dumps(config, protocol=5)
    return _LENGTH.pack(len(blob)) + blob


def _read_exactly(fd: int, count: int) -> bytes:
    """``count`` bytes from ``fd`` (unbuffered: the stdin watcher keeps reading it)."""
    chunks = []
    while count:
        chunk = os.read(fd, count)
        if not chunk:
            raise SystemExit("flowgraph worker: expected a configuration on stdin from the launcher")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _read_config(fd: int) -> WorkerConfig:
    (length,) = _LENGTH.unpack(_read_exactly(fd, _LENGTH.size))
    config = pickle.loads(_read_exactly(fd, length))
    if not isinstance(config, WorkerConfig):
        raise SystemExit("flowgraph worker: the launcher sent no worker configuration")
    return config


def main() -> int:
    """Run the replica described on stdin; exit status 0 when it finished cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when we stop
    return run_worker(_read_config(sys.stdin.fileno()))


def run_worker(config: WorkerConfig) -> int:
    """Run the replica of ``config``, stdin being the lifeline to the launcher; exit status 0 when it finished."""
    logging.basicConfig(level=config.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for path in reversed(config.sys_path):
        if path not in sys.path:
            sys.path.insert(0, path)
    grace_s = config.timeouts.stop_grace_s
    curve = config.wiring.curve
    context = zmq.Context()
    authenticator = start_authenticator(context, curve) if curve is not None else None
    counters = Counters()
    launcher_lost = threading.Event()
    agent = Agent(context, config.control, config.token, config.replica_id,
                  on_stop=_hard_exit_after(grace_s, launcher_lost),
                  counters=counters, heartbeat_s=config.timeouts.heartbeat_s, silence_s=config.silence_s,
                  curve=curve, incarnation=config.incarnation, launcher_lost=launcher_lost)
    pipe = agent.pipe()
    agent.start()
    threading.Thread(target=_watch_stdin, args=(agent, grace_s), name="flowgraph-stdin", daemon=True).start()
    ok = run_configured(config, context, pipe, counters)
    pipe.detach()
    agent.join(timeout=grace_s)
    if authenticator is not None:
        authenticator.stop()
    context.term()
    if launcher_lost.is_set():
        return LAUNCHER_GONE
    return 0 if ok else 1


def _watch_stdin(agent: Agent, grace_s: float) -> None:
    """Block until the launcher's end of stdin closes, then declare the launcher lost."""
    try:
        while os.read(sys.stdin.fileno(), 65536):
            pass
    finally:
        agent.launcher_lost.set()
        _hard_exit_after(grace_s, agent.launcher_lost)("the launcher is gone")


def _hard_exit_after(grace_s: float, launcher_lost: threading.Event) -> Callable[[str], None]:
    """What to do when told to stop: exit hard ``grace_s`` later, in case user code never returns."""

    def arm(reason: str) -> None:
        timer = threading.Timer(grace_s, lambda: os._exit(LAUNCHER_GONE if launcher_lost.is_set() else 1))
        timer.daemon = True
        timer.start()

    return arm
