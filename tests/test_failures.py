"""Fail fast: any error or dead replica stops every replica and names node, replica, host and cause."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import psutil
import pytest

from flowgraph import RunFailed, RunInterrupted, Timeouts, Topology, context, run
from helpers import SLOW_TOPOLOGY, Cli, processes_of_this_session, reap, still_running, write_topology


def failing_topology(where: str) -> Topology:
    """source -> work (2 replicas) -> store; ``where`` names the method that raises."""
    topo = Topology("failing")

    @topo.source
    class Numbers:
        def setup(self):
            if where == "source.setup":
                raise RuntimeError("no source today")

        def generate(self):
            for n in range(10_000):
                if where == "source.generate" and n == 500:
                    raise RuntimeError("generator broke")
                yield n

    @topo.node(inputs=Numbers, parallelism=2)
    class Work:
        def process(self, n):
            if where == "work.process" and n == 1234:
                raise ValueError(f"cannot work on {n}")
            return n

        def finish(self):
            if where == "work.finish" and context().replica == 1:
                raise KeyError("finish failed")

        def teardown(self):
            if where == "work.teardown":
                raise OSError("teardown failed")

    @topo.sink(inputs=Work)
    def store(n):
        pass

    return topo


@pytest.mark.parametrize("where, node, phase, message", [
    ("source.setup", "Numbers", "setup", "RuntimeError: no source today"),
    ("source.generate", "Numbers", "generate", "RuntimeError: generator broke"),
    ("work.process", "Work", "process", "ValueError: cannot work on 1234"),
    ("work.finish", "Work", "finish", "KeyError: 'finish failed'"),
    ("work.teardown", "Work", "teardown", "OSError: teardown failed"),
])
def test_an_exception_in_user_code_fails_the_run_naming_node_replica_host_and_traceback(
        mode, where, node, phase, message):
    with pytest.raises(RunFailed) as caught:
        run(failing_topology(where), inproc=mode == "inproc")
    failure = caught.value
    assert (failure.node, failure.host, failure.phase) == (node, "localhost", phase)
    assert f"node {node!r} replica {failure.replica} on localhost failed in {phase}(): {message}" in str(failure)
    assert "Traceback (most recent call last)" in failure.remote_traceback
    assert "test_failures.py" in failure.remote_traceback
    assert "flowgraph/worker.py" not in failure.remote_traceback
    if where == "work.finish":
        assert failure.replica == 1


def test_the_failing_item_is_shown(mode):
    with pytest.raises(RunFailed) as caught:
        run(failing_topology("work.process"), inproc=mode == "inproc")
    assert caught.value.item == "1234"
    assert "while processing item: 1234" in str(caught.value)


def test_a_replica_killed_with_sigkill_fails_the_run_and_nothing_survives():
    topo = Topology("killed")

    @topo.source
    def numbers():
        yield from range(100_000)

    @topo.node(inputs=numbers, parallelism=2)
    def work(n):
        if n == 5000:
            os.kill(os.getpid(), signal.SIGKILL)
        return n

    @topo.sink(inputs=work)
    def store(n):
        pass

    with pytest.raises(RunFailed) as caught:
        run(topo)
    assert caught.value.node == "work"
    assert caught.value.signal_name == "SIGKILL"
    assert "died: killed by SIGKILL" in str(caught.value)
    assert processes_of_this_session() == []


def test_a_replica_stuck_in_user_code_is_killed_when_another_fails():
    topo = Topology("stuck")

    @topo.source
    def numbers():
        yield from range(10)

    @topo.node(inputs=numbers, parallelism=2)
    def work(n):
        if context().replica == 0:
            time.sleep(3600)
        raise ValueError("replica 1 fails")

    @topo.sink(inputs=work)
    def store(n):
        pass

    started = time.monotonic()
    with pytest.raises(RunFailed, match="replica 1 fails"):
        run(topo)
    assert processes_of_this_session() == []
    assert time.monotonic() - started < 30  # a hang guard, not a speed check


def _refuse_to_load():
    raise RuntimeError("this object cannot be rebuilt in a worker")


class _Unloadable:
    def __reduce__(self):
        return (_refuse_to_load, ())


def test_an_error_while_loading_node_code_is_reported_as_a_failure(mode):
    topo = Topology("unloadable")

    @topo.source
    def numbers():
        yield 1

    class Store:
        def __init__(self):
            self.part = _Unloadable()

        def process(self, n):
            pass

    topo.sink(Store(), inputs=numbers, name="store")
    with pytest.raises(RunFailed) as caught:
        run(topo, inproc=mode == "inproc")
    assert caught.value.phase == "load"
    assert "failed in loading its code: RuntimeError: this object cannot be rebuilt in a worker" in str(caught.value)


def _die_loudly():
    sys.stderr.write("worker is dying on purpose\n")
    sys.stderr.flush()
    os._exit(3)


class _Deadly:
    def __reduce__(self):
        return (_die_loudly, ())


def test_a_worker_that_dies_before_it_reports_is_named_with_its_last_output():
    topo = Topology("deadly")

    @topo.source
    def numbers():
        yield 1

    class Store:
        def __init__(self):
            self.part = _Deadly()

        def process(self, n):
            pass

    topo.sink(Store(), inputs=numbers, name="store")
    with pytest.raises(RunFailed) as caught:
        run(topo)
    assert caught.value.node == "store"
    assert "node 'store' replica 0 on localhost died: exited with status 3; its last output:" in str(caught.value)
    assert "worker is dying on purpose" in str(caught.value)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_stops_every_replica_and_exits_130_or_143(tmp_path, signum, code):
    path = write_topology(tmp_path, SLOW_TOPOLOGY)
    with Cli("run", str(path)) as cli:
        cli.wait_for_line("sink is working")
        workers = cli.descendants()  # the forkserver and the replicas it forked
        assert sum("flowgraph worker" in " ".join(p.cmdline()) for p in workers) == 5
        cli.signal(signum)
        assert cli.wait(10) == code
        _, alive = psutil.wait_procs(workers, timeout=1)
        assert alive == []
        assert f"interrupted by {signal.Signals(signum).name}" in cli.output


def test_workers_exit_by_themselves_when_the_launcher_is_killed(tmp_path):
    path = write_topology(tmp_path, SLOW_TOPOLOGY)
    with Cli("run", str(path)) as cli:
        cli.wait_for_line("sink is working")
        workers = cli.descendants()
        cli.signal(signal.SIGKILL)
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert reap(alive, 0) == []


def test_a_failed_run_exits_1_and_prints_node_replica_and_traceback(tmp_path):
    path = write_topology(tmp_path, """
        from flowgraph import Topology

        topo = Topology("broken")

        @topo.source
        def numbers():
            yield from range(100)

        @topo.node(inputs=numbers, parallelism=3)
        def parse(n):
            if n == 42:
                return {"n": n}["missing"]
            return n

        @topo.sink(inputs=parse)
        def store(n):
            pass
    """)
    with Cli("run", str(path)) as cli:
        assert cli.wait(60) == 1
        output = cli.output
    assert "flowgraph: error: node 'parse' replica" in output
    assert "on localhost failed in process(): KeyError: 'missing'" in output
    assert 'return {"n": n}["missing"]' in output
    assert "while processing item: 42" in output


def test_interrupting_a_python_run_raises_run_interrupted(mode):
    topo = Topology("interrupted")
    launcher = os.getpid()  # a worker's parent is its host's forkserver, not the launcher

    @topo.source
    def numbers():
        n = 0
        while True:
            yield n
            n += 1

    @topo.sink(inputs=numbers)
    def store(n):
        if n == 1000:
            os.kill(launcher, signal.SIGINT)

    with pytest.raises(RunInterrupted) as caught:
        run(topo, inproc=mode == "inproc")
    assert caught.value.exit_code == 130


def test_workers_exit_by_themselves_when_the_launcher_stops_answering(tmp_path):
    path = write_topology(tmp_path, SLOW_TOPOLOGY)
    with Cli("run", str(path)) as cli:
        cli.wait_for_line("sink is working")
        workers = cli.descendants()
        cli.signal(signal.SIGSTOP)  # alive, holding the workers' stdin open, but silent
        assert still_running(workers, timeout_s=30) == []


def test_a_frozen_replica_fails_the_run_when_its_heartbeat_stops(tmp_path):
    path = write_topology(tmp_path, SLOW_TOPOLOGY)
    with Cli("run", str(path)) as cli:
        line = cli.wait_for_line("sink is working")
        store = psutil.Process(int(line.split("pid=")[1]))
        store.suspend()
        assert cli.wait(60) == 1
        assert "node 'Store' replica 0 on localhost stopped answering: no heartbeat for 10 s" in cli.output
        assert not psutil.pid_exists(store.pid) or store.status() == psutil.STATUS_ZOMBIE


def test_a_failed_run_reports_failed_and_the_counters_as_far_as_they_got(mode):
    topo = Topology("fails-late")

    @topo.source
    def numbers():
        yield from range(20_000)

    @topo.sink(inputs=numbers)
    def store(n):
        if n == 10_000:
            raise ValueError("item 10000 is bad")

    with pytest.raises(RunFailed) as caught:
        run(topo, inproc=mode == "inproc")
    report = caught.value.report
    assert report.status == "failed"
    assert report.summary().startswith("topology 'fails-late' (" + mode + "): failed after ")
    assert 0 < report["store"].items_in <= 10_000 and report["numbers"].items_out >= 10_000
    assert report["store"].replicas[0].error.startswith("node 'store' replica 0 on localhost failed in process()")


def test_an_interrupted_run_reports_interrupted_and_each_replica_counters_and_time(tmp_path):
    path = write_topology(tmp_path, SLOW_TOPOLOGY)
    with Cli("run", str(path)) as cli:
        cli.wait_for_line("sink is working")
        cli.signal(signal.SIGINT)
        assert cli.wait(10) == 130
        output = cli.output
    assert "topology 'slow' (local): interrupted after " in output
    store = next(line for line in output.splitlines() if line.startswith("Store "))
    items_in, time_s = store.split()[3], store.split()[5]
    assert int(items_in) >= 1000 and float(time_s) > 0, store


def test_timeouts_reach_the_launcher_and_every_worker(tmp_path):
    """A frozen replica is given up after the run's own ``local_silence_s``, not the default 10 s."""
    pid_file = tmp_path / "pid"
    topo = Topology("frozen")

    @topo.source
    def numbers():
        yield from range(1_000_000)

    @topo.sink(inputs=numbers)
    def store(n):
        if n == 1000:
            pid_file.write_text(str(os.getpid()))
        time.sleep(0.001)

    failure: list[BaseException] = []

    def launch() -> None:
        try:
            run(topo, timeouts=Timeouts(local_silence_s=1.5))
        except RunFailed as error:
            failure.append(error)

    launcher = threading.Thread(target=launch)
    launcher.start()
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline and launcher.is_alive():
        time.sleep(0.05)
    psutil.Process(int(pid_file.read_text())).suspend()
    launcher.join(30)
    assert not launcher.is_alive() and failure
    assert "node 'store' replica 0 on localhost stopped answering: no heartbeat for 1.5 s" in str(failure[0])


def test_a_traceback_shows_the_users_file_line_and_text_on_a_host_without_the_file(tmp_path):
    """Code travels with its file name, and the file's text travels with it (remote hosts lack the file)."""
    import importlib.util
    import linecache

    import cloudpickle

    from flowgraph.errors import user_traceback
    from flowgraph.wire.pickling import dumps_code, remember_sources, source_texts

    path = write_topology(tmp_path, """
        from flowgraph import Topology

        topo = Topology("far")

        @topo.source
        def numbers():
            yield 1

        @topo.sink(inputs=numbers)
        def store(n):
            raise LookupError("not on this host")
    """, name="far_topology.py")
    spec = importlib.util.spec_from_file_location("far_topology", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["far_topology"] = module
    try:
        spec.loader.exec_module(module)
        topology = module.topo.spec()
        texts = source_texts(topology)
        cloudpickle.register_pickle_by_value(module)
        shipped = dumps_code(topology.node("store").code)
    finally:
        del sys.modules["far_topology"]
    path.unlink()
    linecache.clearcache()
    remember_sources(texts)
    store = cloudpickle.loads(shipped)
    with pytest.raises(LookupError) as caught:
        store(1)
    text = user_traceback(caught.value)
    assert f'File "{path}", line 12, in store' in text
    assert 'raise LookupError("not on this host")' in text
