"""Supervised restarts: a replica that dies, freezes or raises is restarted, and nothing it held is lost."""

from __future__ import annotations

import collections
import dataclasses
import os
import random
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from flowgraph import RunFailed, Timeouts, Topology, by_key, context, run
from helpers import processes_of_this_session

COUNT = 20_000


class Received:
    """A sink that appends every item it gets to a file of its process (what it did survives its death)."""

    restartable = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def setup(self):
        self.fd = os.open(self.directory / f"received-{os.getpid()}", os.O_CREAT | os.O_APPEND | os.O_WRONLY)

    def process(self, n):
        os.write(self.fd, f"{n}\n".encode())

    def teardown(self):
        os.close(self.fd)


def received_in(directory: Path) -> list[int]:
    return [int(line) for path in directory.glob("received-*") for line in path.read_text().split()]


def once(marker: Path) -> bool:
    """True the first time it is asked for ``marker`` in the whole run (any process), False after."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def pipeline(marker: Path, victim: str, at: int, how: str = "kill", grouping=None, parallelism: int = 2,
             restartable: bool = True) -> Topology:
    """numbers -> work (parallelism) -> store; ``victim`` (a node) dies or raises once, at item ``at``."""
    topo = Topology(f"restart-{victim}")

    def strike(n: int) -> None:
        if n == at and once(marker):
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"a fault at {n}")

    @topo.source
    def numbers():
        for n in range(COUNT):
            if victim == "numbers":
                strike(n)
            yield n

    @topo.node(inputs={numbers: grouping or by_key(lambda n: n % 7)}, parallelism=parallelism)
    def work(n):
        if victim == "work":
            strike(n)
        return n

    @topo.sink(inputs=work, parallelism=2)
    class Store(Received):
        def __init__(self):
            super().__init__(marker.parent)

        def process(self, n):
            if victim == "store":
                strike(n)
            super().process(n)

    Store.code.restartable = restartable
    return topo


def assert_at_least_once(received: list[int], count: int = COUNT) -> int:
    """Every item arrived; returns how many arrived more than once."""
    seen = collections.Counter(received)
    missing = [n for n in range(count) if n not in seen]
    assert not missing, f"{len(missing)} items lost, e.g. {missing[:5]}"
    assert set(seen) == set(range(count))
    return sum(seen.values()) - count


@pytest.mark.parametrize("victim", ["numbers", "work", "store"])
def test_a_replica_killed_with_sigkill_is_restarted_and_every_item_arrives(tmp_path, victim):
    topo = pipeline(tmp_path / "struck", victim, at=COUNT // 3)
    report = run(topo, restarts=2)
    assert_at_least_once(received_in(tmp_path))
    restarted = [r for node in report for r in node.replicas if r.restarts]
    assert [(r.node, r.restarts) for r in restarted] == [(victim if victim != "store" else "Store", 1)]
    assert "killed by SIGKILL" in restarted[0].restarted_because[0]
    assert processes_of_this_session() == []


@pytest.mark.parametrize("mode_", ["inproc", "local"])
def test_a_replica_whose_code_raises_is_restarted_and_the_item_delivered_again(tmp_path, mode_):
    topo = pipeline(tmp_path / "struck", "work", at=1234, how="raise", grouping=None)
    report = run(topo, inproc=mode_ == "inproc", restarts=1)
    assert_at_least_once(received_in(tmp_path))
    [replica] = [r for r in report["work"].replicas if r.restarts]
    assert "failed in process(): RuntimeError: a fault at 1234" in replica.restarted_because[0]


def test_past_its_budget_a_replica_fails_the_run_naming_the_budget(tmp_path):
    topo = Topology("hopeless")
    topo.source(lambda: iter(range(1000)), name="numbers")

    @topo.node(inputs="numbers")
    def work(n):
        if n == 500:
            raise ValueError("always")
        return n

    topo.sink(lambda n: None, inputs=work, name="store")
    with pytest.raises(RunFailed) as caught:
        run(topo, restarts=2)
    assert ("node 'work' replica 0 on localhost failed in process(): ValueError: always; not restarted again: "
            "it was restarted 2 times, its budget (restarts=2)") in str(caught.value)


def test_a_class_node_that_keeps_state_is_not_restarted_and_the_message_says_how_to_allow_it(tmp_path):
    topo = pipeline(tmp_path / "struck", "store", at=100, restartable=False)
    with pytest.raises(RunFailed) as caught:
        run(topo, restarts=3)
    assert ("died: killed by SIGKILL; not restarted: sink 'Store' keeps state a restart would lose (declare "
            "restartable = True on its class if its setup() rebuilds all it needs)") in str(caught.value)


def test_a_node_may_have_its_own_budget(tmp_path):
    topo = Topology("own-budget")
    topo.source(lambda: iter(range(5000)), name="numbers")
    marker = tmp_path / "struck"

    @topo.node(inputs="numbers", restarts=1)
    def work(n):
        if n == 100 and once(marker):
            os.kill(os.getpid(), signal.SIGKILL)
        return n

    topo.sink(lambda n: None, inputs=work, name="store")
    report = run(topo)
    assert report["work"].replicas[0].restarts == 1 and report["store"].items_in >= 5000


def test_a_frozen_replica_is_killed_and_restarted(tmp_path):
    pid_file = tmp_path / "pid"
    topo = Topology("frozen")
    topo.source(lambda: iter(range(COUNT)), name="numbers")

    @topo.node(inputs="numbers", parallelism=2)
    def work(n):
        if n >= 2000 and context().replica == 0 and once(tmp_path / "told"):
            pid_file.write_text(str(os.getpid()))
        return n

    topo.sink(Received(tmp_path), inputs=work, name="store")
    reports = []
    launcher = threading.Thread(target=lambda: reports.append(run(
        topo, restarts=1, timeouts=Timeouts(local_silence_s=1.5))))
    launcher.start()
    deadline = time.monotonic() + 60
    while not pid_file.exists() and launcher.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    frozen = psutil.Process(int(pid_file.read_text()))
    frozen.suspend()
    launcher.join(120)
    assert not launcher.is_alive() and reports
    assert_at_least_once(received_in(tmp_path))
    [replica] = [r for r in reports[0]["work"].replicas if r.restarts]
    assert "stopped answering: no heartbeat for 1.5 s" in replica.restarted_because[0]
    assert not psutil.pid_exists(frozen.pid) or frozen.status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("seed", range(16))
def test_chaos_a_random_replica_killed_at_a_random_point_loses_nothing(tmp_path, seed):
    rng = random.Random(seed)
    victim = rng.choice(["numbers", "split", "count", "store"])
    at = rng.randrange(1, 3000)
    marker = tmp_path / "struck"
    topo = Topology("chaos")

    def strike(n: int) -> None:
        if n == at and once(marker):
            os.kill(os.getpid(), signal.SIGKILL)

    @topo.source(parallelism=2)
    def numbers():
        me = context()
        for n in range(me.replica, 3000, me.parallelism):
            if victim == "numbers":
                strike(n)
            yield n

    @topo.node(inputs=numbers, parallelism=2)
    def split(n):
        if victim == "split":
            strike(n)
        yield n
        yield -n - 1

    @topo.node(inputs={split: by_key(lambda n: abs(n) % 5)}, parallelism=3)
    def count(n):
        if victim == "count":
            strike(abs(n))
        return n

    class Store(Received):
        def process(self, n):
            if victim == "store":
                strike(abs(n))
            super().process(n)

    topo.sink(Store(tmp_path), inputs=count, parallelism=2, name="store")
    report = run(topo, restarts=3)
    received = collections.Counter(received_in(tmp_path))
    assert set(received) == set(range(3000)) | {-n - 1 for n in range(3000)}, (victim, at)
    assert max(received.values()) <= 2, "one death replays an item at most once"
    assert sum(r.restarts for node in report for r in node.replicas) == (1 if marker.exists() else 0)


def poisoned(tmp_path: Path, on_error: str) -> Topology:
    """numbers -> work (kills itself on 1234, every time) -> store; work's dead letters -> errors."""
    topo = Topology("poisoned")
    topo.source(lambda: iter(range(5000)), name="numbers")

    @topo.node(inputs="numbers", parallelism=2, on_error=on_error)
    def work(n):
        if n == 1234:
            os.kill(os.getpid(), signal.SIGKILL)
        return n

    topo.sink(Received(tmp_path), inputs=work, name="store")
    if on_error == "dead_letter":
        topo.sink(Received(tmp_path / "errors"), inputs=work.errors, name="errors")
    return topo


def test_a_poison_item_that_kills_its_replica_every_time_is_dead_lettered_after_three_deaths(tmp_path):
    (tmp_path / "errors").mkdir()
    letters: list = []

    class Letters(Received):
        def process(self, letter):
            letters.append(letter)
            super().process(f"{letter.item}|{letter.error_type}|{letter.attempts}|{letter.node}")

    topo = poisoned(tmp_path, "dead_letter")
    topo._nodes[-1] = dataclasses.replace(topo._nodes[-1], code=Letters(tmp_path / "errors"))
    report = run(topo, restarts=5)
    assert sorted(set(received_in(tmp_path))) == [n for n in range(5000) if n != 1234]
    rows = [line for path in (tmp_path / "errors").glob("received-*") for line in path.read_text().split()]
    assert rows == ["1234|PoisonItem|3|work"]
    assert report["work"].dead_lettered == 1 and report["work"].restarts == 3


def test_a_poison_item_fails_the_run_naming_it_when_its_node_does_not_set_items_aside(tmp_path):
    with pytest.raises(RunFailed) as caught:
        run(poisoned(tmp_path, "fail"), restarts=5)
    assert ("failed in process(): a poison item (declare on_error=\"dead_letter\" or \"skip\" to set it aside): "
            "PoisonItem: it was in flight at 3 deaths of work/") in str(caught.value)
    assert caught.value.item == "1234"


@pytest.mark.slow
def test_a_replica_stopped_for_ten_seconds_resumes_or_is_replaced_and_nothing_is_lost(tmp_path):
    """With the default 10 s of silence the launcher may give the stopped replica up or not: either way, all arrives."""
    pid_file = tmp_path / "pid"
    topo = Topology("paused")
    topo.source(lambda: iter(range(COUNT)), name="numbers")

    @topo.node(inputs="numbers", parallelism=2)
    def work(n):
        if n >= 2000 and context().replica == 1 and once(tmp_path / "told"):
            pid_file.write_text(str(os.getpid()))
        return n

    class SlowStore(Received):
        def process(self, n):
            time.sleep(0.0005)
            super().process(n)

    topo.sink(SlowStore(tmp_path), inputs=work, name="store")
    reports: list = []
    launcher = threading.Thread(target=lambda: reports.append(run(topo, restarts=1)))
    launcher.start()
    deadline = time.monotonic() + 60
    while not pid_file.exists() and launcher.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    paused = psutil.Process(int(pid_file.read_text()))
    paused.suspend()
    time.sleep(10)  # the fault itself: ten seconds without a word
    if paused.is_running():
        paused.resume()
    launcher.join(120)
    assert not launcher.is_alive() and reports
    assert_at_least_once(received_in(tmp_path))


def test_a_restarted_class_source_is_asked_to_seek_past_what_was_acknowledged(tmp_path):
    marker, sought = tmp_path / "struck", tmp_path / "sought"
    topo = Topology("seeking")

    @topo.source
    class Numbers:
        def setup(self):
            self.start = 0

        def seek(self, n):
            sought.write_text(str(n))
            self.start = n

        def generate(self):
            for n in range(self.start, 6000):
                if n % 200 == 0:
                    time.sleep(0.05)  # slow enough for heartbeats to report what was acknowledged
                if n == 4000 and once(marker):
                    os.kill(os.getpid(), signal.SIGKILL)
                yield n

    topo.sink(Received(tmp_path), inputs=Numbers, name="store")
    run(topo, restarts=1)
    assert_at_least_once(received_in(tmp_path), count=6000)
    assert 0 < int(sought.read_text()) <= 4000
