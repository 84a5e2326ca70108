"""The forkserver: its frames, the modules it reads from pickles, and a real template stepped frame by frame."""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import threading

import cloudpickle
import psutil
import pytest

from flowgraph import Topology, context
from flowgraph.runtime.bootstrap import LAUNCHER_GONE
from flowgraph.runtime.config import WorkerConfig
from flowgraph.runtime.forkserver import Frames, Shared, frame, referenced_modules
from flowgraph.runtime.sockets import Wiring
from flowgraph.testing import run_and_collect
from helpers import SLOW_TOPOLOGY, Cli, write_topology


def test_frames_split_a_stream_at_any_byte_into_its_messages():
    stream = frame("spawn", "a/0", 3, b"\x00\x01") + frame("kill", "a/0") + frame("exit", "a/0", 3, -9)
    for cut in range(len(stream) + 1):
        frames = Frames()
        messages = [*frames.feed(stream[:cut]), *frames.feed(stream[cut:])]
        assert messages == [["spawn", "a/0", 3, b"\x00\x01"], ["kill", "a/0"], ["exit", "a/0", 3, -9]]


def test_the_modules_a_pickle_imports_are_read_without_loading_it():
    import json as json_module

    def by_reference(item):
        return json_module.dumps(item), subprocess.PIPE

    assert {"json", "subprocess"} <= referenced_modules(cloudpickle.dumps(by_reference))
    assert "collections" in referenced_modules(pickle.dumps(__import__("collections").OrderedDict()))

    class Explodes:
        def __reduce__(self):
            return (os._exit, (3,))

    assert "posix" in referenced_modules(pickle.dumps(Explodes()))  # read, never run: we are still here


def _config(code: bytes) -> WorkerConfig:
    return WorkerConfig(token=b"t" * 16, control="tcp://127.0.0.1:9", node="n", index=0, plan=b"", code=code,
                        wiring=Wiring("tcp://127.0.0.1"))


class _Loud:
    """Loading it prints and exits with status 3: the worker dies before it can report."""

    def __reduce__(self):
        return (exec, ("import os, sys; print('loud on stdout'); print('loud on stderr', file=sys.stderr); "
                       "sys.stdout.flush(); sys.stderr.flush(); os._exit(3)",))


class _Stuck:
    """Loading it blocks until killed."""

    def __reduce__(self):
        return (exec, ("import time; print('stuck', flush=True); time.sleep(600)",))


class Template:
    """A real ``python -m flowgraph forkserver``, driven frame by frame."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-u", "-m", "flowgraph", "forkserver"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._frames = Frames()
        self._pending: list[list] = []

    def send(self, *message) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(frame(*message))
        self.process.stdin.flush()

    def next(self, timeout_s: float = 20.0) -> list:
        """The next message, skipping ``out`` frames of nothing."""
        result: list = []

        def read() -> None:
            assert self.process.stdout is not None
            while not self._pending:
                data = os.read(self.process.stdout.fileno(), 65536)
                if not data:
                    return
                self._pending += self._frames.feed(data)
            result.append(self._pending.pop(0))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout_s)
        assert result, "the template said nothing"
        return result[0]

    def until(self, verb: str) -> tuple[list, list[list]]:
        """Messages up to the first ``verb`` one: (it, those before it)."""
        before = []
        while (message := self.next())[0] != verb:
            before.append(message)
        return message, before

    def close(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(20)


@pytest.fixture
def template():
    started = Template()
    try:
        yield started
    finally:
        if started.process.poll() is None:
            started.process.kill()
        started.process.wait(10)


def test_a_template_forks_a_replica_forwards_its_output_then_reports_its_exit(template):
    assert template.next()[:1] == ["ready"]
    blob = cloudpickle.dumps(_Loud())
    template.send("run", pickle.dumps(Shared(blob, {"n": blob})))  # the plan loads first
    template.send("spawn", "n/0", 2, pickle.dumps(_config(b"")))
    exit_message, before = template.until("exit")
    assert exit_message == ["exit", "n/0", 2, 3]
    written = {stream: b"".join(m[4] for m in before if m[0] == "out" and m[3] == stream) for stream in (1, 2)}
    assert b"loud on stdout" in written[1]
    assert b"loud on stderr" in written[2]
    assert all(m[1:3] == ["n/0", 2] for m in before)
    assert template.close() == 0


def test_a_killed_replica_is_reported_killed_and_closing_stdin_kills_what_runs(template):
    template.next()
    blob = cloudpickle.dumps(_Stuck())
    template.send("run", pickle.dumps(Shared(blob, {"n": blob})))
    for index in range(2):
        config = dataclasses.replace(_config(b""), index=index)
        template.send("spawn", f"n/{index}", 0, pickle.dumps(config))
    template.until("out")
    children = psutil.Process(template.process.pid).children()
    assert len(children) == 2
    assert all(child.cmdline()[0].startswith("flowgraph worker n/") for child in children)
    template.send("kill", "n/0")
    assert template.until("exit")[0] == ["exit", "n/0", 0, -signal.SIGKILL]
    assert template.close() == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


class _GivesUp:
    """Loading it exits as a worker that gave the launcher up does."""

    def __reduce__(self):
        return (exec, (f"import os; os._exit({LAUNCHER_GONE})",))


def test_a_template_whose_replicas_all_gave_the_launcher_up_gives_it_up_too(template):
    template.next()
    blob = cloudpickle.dumps(_GivesUp())
    template.send("run", pickle.dumps(Shared(blob, {"n": blob})))
    template.send("spawn", "n/0", 0, pickle.dumps(_config(b"")))
    assert template.until("exit")[0] == ["exit", "n/0", 0, LAUNCHER_GONE]
    assert template.process.wait(20) == 0  # its stdin still open: it gave up by itself


def test_replicas_are_forks_of_one_template_per_host_named_in_ps(tmp_path):
    path = write_topology(tmp_path, SLOW_TOPOLOGY)
    with Cli("run", str(path)) as cli:
        cli.wait_for_line("sink is working")
        (template,) = psutil.Process(cli.process.pid).children()
        assert "flowgraph forkserver" in " ".join(template.cmdline())
        names = sorted(" ".join(child.cmdline()).strip() for child in template.children())
        assert names == ["flowgraph worker Store/0", "flowgraph worker numbers/0", "flowgraph worker work/0",
                         "flowgraph worker work/1", "flowgraph worker work/2"]
        assert all(os.environ["FLOWGRAPH_TEST_SESSION"] == child.environ()["FLOWGRAPH_TEST_SESSION"]
                   for child in template.children())
        cli.signal(signal.SIGINT)
        assert cli.wait(20) == 130


def test_a_killed_template_fails_the_run_and_leaves_none_of_its_replicas(tmp_path):
    path = write_topology(tmp_path, SLOW_TOPOLOGY)
    with Cli("run", str(path)) as cli:
        cli.wait_for_line("sink is working")
        (template,) = psutil.Process(cli.process.pid).children()
        replicas = template.children()
        template.kill()
        assert cli.wait(30) == 1
        assert "died: its forkserver was killed by SIGKILL" in cli.output
        _, alive = psutil.wait_procs(replicas, timeout=10)
        assert alive == []


def test_node_code_whose_import_starts_a_thread_runs_in_fresh_interpreters(tmp_path, monkeypatch):
    (tmp_path / "threaded_module.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
        "def double(n):\n"
        "    return 2 * n\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import threaded_module

    topo = Topology("threaded")
    topo.source(lambda: iter(range(50)), name="numbers")
    topo.node(threaded_module.double, inputs="numbers", name="double", parallelism=2)
    topo.sink(lambda n: None, inputs="double", name="store")
    assert sorted(run_and_collect(topo)["store"]) == [2 * n for n in range(50)]


def test_forked_replicas_have_their_own_process_and_random_state():
    topo = Topology("own")

    @topo.source
    def numbers():
        yield from range(40)

    @topo.node(inputs=numbers, parallelism=4)
    def who(n):
        import random

        return os.getpid(), os.getppid(), context().replica, random.random()

    topo.sink(lambda seen: None, inputs=who, name="store")
    seen = run_and_collect(topo)["store"]
    assert len({pid for pid, _, _, _ in seen}) == 4
    assert len({parent for _, parent, _, _ in seen}) == 1  # one template
    assert len({value for _, _, _, value in seen}) == 40  # forks do not share a random state
