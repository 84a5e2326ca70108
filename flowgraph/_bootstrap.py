"""The entry of a worker process: ``python -m flowgraph worker``.

The launcher writes one length-prefixed pickle to the worker's stdin (token,
control endpoint, which replica, the cloudpickled plan and node) and
keeps stdin open: when it closes, the launcher is gone and the worker stops
(hard exit after ``STOP_GRACE_S`` if user code does not return). The token
never appears on a command line or on disk.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import sys
import threading
from typing import Any

import zmq

from .agent import Agent, finish_pipe
from .counters import Counters
from .security import start_authenticator
from .worker import run_configured

STOP_GRACE_S = 2.0
_LENGTH = struct.Struct("!Q")


def encode_config(config: dict[str, Any]) -> bytes:
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


def _read_config(fd: int) -> dict[str, Any]:
    (length,) = _LENGTH.unpack(_read_exactly(fd, _LENGTH.size))
    return pickle.loads(_read_exactly(fd, length))


def main() -> int:
    """Run the replica described on stdin; exit status 0 when it finished cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when we stop
    config = _read_config(sys.stdin.fileno())
    logging.basicConfig(level=config["log_level"], stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    for path in reversed(config["sys_path"]):
        if path not in sys.path:
            sys.path.insert(0, path)
    context = zmq.Context()
    authenticator = start_authenticator(context, config["curve"]) if config["curve"] is not None else None
    node, index = config["replica"]
    counters = Counters()
    agent = Agent(context, config["control"], config["token"], f"{node}/{index}", on_stop=_arm_hard_exit,
                  counters=counters, curve=config["curve"], launcher_timeout_s=config["launcher_timeout_s"])
    pipe = agent.pipe()
    agent.start()
    threading.Thread(target=_watch_stdin, args=(agent,), name="flowgraph-stdin", daemon=True).start()
    ok = run_configured(config, context, pipe, counters)
    finish_pipe(pipe)
    agent.join(timeout=STOP_GRACE_S)
    if authenticator is not None:
        authenticator.stop()
    context.term()
    return 0 if ok else 1


def _watch_stdin(agent: Agent) -> None:
    """Block until the launcher's end of stdin closes, then declare the launcher lost."""
    try:
        while os.read(sys.stdin.fileno(), 65536):
            pass
    finally:
        agent.launcher_lost.set()
        _arm_hard_exit("the launcher is gone")


def _arm_hard_exit(reason: str) -> None:
    timer = threading.Timer(STOP_GRACE_S, os._exit, (1,))
    timer.daemon = True
    timer.start()
