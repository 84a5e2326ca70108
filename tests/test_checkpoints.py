"""Checkpoints with real processes: kill the whole run at seeded moments, resume, and get a clean run's results.

Each topology writes into SQLite through ``nodes.sqlite.SQLiteStore``
(exactly once with checkpoints) and keeps state in class nodes whose
``finish()`` reports it, so "the same results" means the same committed
rows, no more and no fewer, however often the run was killed.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowgraph import CheckpointError, run
from flowgraph.cli.loader import load_topology
from helpers import write_topology

WORDS = """
import os, time
from flowgraph import Topology, by_key, context
from nodes.sqlite import SQLiteStore

N = int(os.environ.get("FG_N", "3000"))
PAUSE = float(os.environ.get("FG_PAUSE", "0.0005"))
DB = os.environ["FG_DB"]
topo = Topology("words")

@topo.source(parallelism=int(os.environ.get("FG_SOURCES", "1")))
def numbers():
    me = context()
    for i in range(me.replica, N, me.parallelism):
        if PAUSE:
            time.sleep(PAUSE)
        yield {"i": i, "word": f"w{i % 37}"}

@topo.node(inputs={numbers: by_key("word")}, parallelism=2)
class Count:
    def setup(self):
        self.counts = {}
        pids = os.environ.get("FG_PIDS")
        if pids and context().incarnation == 0:
            with open(os.path.join(pids, f"Count-{context().replica}"), "w") as file:
                file.write(str(os.getpid()))
    def process(self, item):
        self.counts[item["word"]] = self.counts.get(item["word"], 0) + 1
    def snapshot(self):
        return dict(self.counts)
    def restore(self, state):
        self.counts = dict(state)
    def finish(self):
        for word, n in sorted(self.counts.items()):
            yield {"word": word, "n": n}

topo.sink(SQLiteStore(DB, "counts"), inputs=Count, name="counts")
topo.sink(SQLiteStore(DB, "rows", columns=["i", "word"]), inputs=numbers, name="rows", parallelism=2)
"""

DIAMOND = """
import os, time
from flowgraph import Topology, broadcast, context
from nodes.sqlite import SQLiteStore

N = int(os.environ.get("FG_N", "2000"))
DB = os.environ["FG_DB"]
topo = Topology("diamond")

@topo.source
def numbers():
    for i in range(N):
        time.sleep(0.001)
        yield i

@topo.node(inputs={numbers: broadcast()}, parallelism=2)
class Seen:
    seen = 0
    def process(self, n):
        self.seen += 1
        return {"i": n, "by": context().replica}
    def finish(self):
        yield {"i": -1, "by": context().replica, "seen": self.seen}

@topo.node(inputs=numbers, parallelism=2)
def square(n):
    return {"i": n * n, "by": -1}

@topo.node(inputs=[Seen, square])
class Join:
    total = 0
    def process(self, row):
        self.total += row["i"]
        return {"i": row["i"], "by": row["by"], "seen": row.get("seen", 0)}
    def finish(self):
        yield {"i": self.total, "by": -2, "seen": 0}

topo.sink(SQLiteStore(DB, "rows"), inputs=Join, name="store")
"""


def rows(db: Path, table: str) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return sorted(connection.execute(f"SELECT * FROM {table}").fetchall())


class Launcher:
    """``flowgraph run`` in its own session, so its whole process group can be SIGKILLed at once."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "flowgraph", "run", *args], cwd=cwd,
                                        env={**os.environ, **env}, start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)

    def wait(self, timeout_s: float = 90.0) -> tuple[int, str]:
        try:
            _, err = self.process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(f"still running after {timeout_s} s") from None
        return self.process.returncode, err


def wait_until(condition, timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def manifests(directory: Path) -> int:
    return len(list(directory.glob("ckpt-*/MANIFEST.json")))


def newest(directory: Path) -> int:
    """The id of the newest complete checkpoint (0: none)."""
    return max((int(path.parent.name.removeprefix("ckpt-")) for path in directory.glob("ckpt-*/MANIFEST.json")),
               default=0)


def taking(directory: Path) -> bool:
    """A checkpoint is being written: a directory with parts and no manifest yet."""
    return any(not (path / "MANIFEST.json").exists() and any(path.glob("*.part"))
               for path in directory.glob("ckpt-*"))


def clean_run(tmp_path: Path, source: str, env: dict[str, str]) -> Path:
    """The reference: the topology run once without checkpoints; returns its database."""
    db = tmp_path / "clean.db"
    topo = write_topology(tmp_path, source, "clean_topo.py")
    launcher = Launcher(str(topo), "--quiet", cwd=tmp_path, env={**env, "FG_DB": str(db)})
    code, err = launcher.wait()
    assert code == 0, err
    return db


def kill_at(launcher: Launcher, moment: str, directory: Path, db: Path, rng: random.Random) -> None:
    """Return at ``moment`` of the run (or when it ended by itself): while a checkpoint is being written, a little
    after the next checkpoint completed, or before any could (once the sinks are set up)."""
    done = manifests(directory) if directory.exists() else 0

    def ended() -> bool:
        return launcher.process.poll() is not None

    if moment == "during":
        wait_until(lambda: ended() or (directory.exists() and taking(directory)), what="a checkpoint being written")
    elif moment == "after":
        wait_until(lambda: ended() or (directory.exists() and manifests(directory) > done), what="a checkpoint")
        time.sleep(rng.uniform(0, 0.2))  # a seeded moment between two checkpoints
    else:
        wait_until(lambda: ended() or db.exists(), what="the sinks' setup()")


def killed_and_resumed(tmp_path: Path, source: str, env: dict[str, str], seed: int, kills: int,
                       options: tuple[str, ...] = ()) -> tuple[Path, str]:
    """Run with checkpoints, SIGKILL the whole process group ``kills`` times at seeded moments (some while a
    checkpoint is being written), resume each time; returns the database and the last run's stderr."""
    rng = random.Random(seed)
    db, directory = tmp_path / "run.db", tmp_path / "ckpt"
    topo = write_topology(tmp_path, source)
    env = {**env, "FG_DB": str(db)}
    args = [str(topo), "--checkpoint", str(directory), "--checkpoint-interval", "0.2", "--quiet", *options]
    for attempt in range(kills):
        launcher = Launcher(*args, cwd=tmp_path, env=env)
        try:
            kill_at(launcher, rng.choice(["before the first", "during", "after"] if attempt == 0 else
                                         ["during", "after"]), directory, db, rng)
        finally:
            launcher.kill_group()
        args = [str(topo), "--resume", str(directory), "--quiet"]
    code, err = Launcher(*args, cwd=tmp_path, env=env).wait()
    assert code == 0, err
    return db, err


@pytest.mark.parametrize("seed", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_a_word_count_killed_five_times_commits_exactly_a_clean_runs_rows(tmp_path, seed):
    env = {"FG_SOURCES": "3"}
    clean = clean_run(tmp_path, WORDS, env)
    db, _ = killed_and_resumed(tmp_path, WORDS, env, seed, kills=5)
    assert rows(db, "counts") == rows(clean, "counts")
    assert rows(db, "rows") == rows(clean, "rows") == sorted((i, f"w{i % 37}") for i in range(3000))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [4])
def test_a_diamond_with_broadcast_killed_and_resumed_commits_exactly_a_clean_runs_rows(tmp_path, seed):
    clean = clean_run(tmp_path, DIAMOND, {})
    db, _ = killed_and_resumed(tmp_path, DIAMOND, {}, seed, kills=4)
    assert rows(db, "rows") == rows(clean, "rows")


def test_a_crash_before_the_first_checkpoint_resumes_from_the_start_and_loses_nothing(tmp_path):
    """bytewax#181: a crash in the first epoch must not look like a smaller run on resume."""
    db, directory = tmp_path / "run.db", tmp_path / "ckpt"
    topo = write_topology(tmp_path, WORDS)
    env = {"FG_DB": str(db), "FG_SOURCES": "3", "FG_N": "20000"}
    launcher = Launcher(str(topo), "--checkpoint", str(directory), "--checkpoint-interval", "600", "--quiet",
                        cwd=tmp_path, env=env)
    try:
        wait_until(lambda: db.exists(), what="the sinks' setup()")
        time.sleep(0.3)  # items flow, no checkpoint is taken (the interval is 10 minutes)
    finally:
        launcher.kill_group()
    assert manifests(directory) == 0
    code, err = Launcher(str(topo), "--resume", str(directory), "--quiet", cwd=tmp_path, env=env).wait()
    assert code == 0, err
    assert rows(db, "rows") == sorted((i, f"w{i % 37}") for i in range(20000))
    assert sum(n for _, n in rows(db, "counts")) == 20000


def test_one_replica_killed_with_restarts_rolls_back_and_commits_exactly_a_clean_runs_rows(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {"FG_SOURCES": "2", "FG_PAUSE": "0.001", "FG_PIDS": str(pids)}
    clean = clean_run(tmp_path, WORDS, env)
    for path in pids.iterdir():
        path.unlink()
    db, directory = tmp_path / "run.db", tmp_path / "ckpt"
    topo = write_topology(tmp_path, WORDS)
    launcher = Launcher(str(topo), "--checkpoint", str(directory), "--checkpoint-interval", "0.2", "--restarts", "2",
                        cwd=tmp_path, env={**env, "FG_DB": str(db)})
    try:
        wait_until(lambda: directory.exists() and manifests(directory) >= 1, what="a checkpoint")
        os.kill(int((pids / "Count-1").read_text()), signal.SIGKILL)
        code, err = launcher.wait()
    finally:
        launcher.kill_group()
    assert code == 0, err
    assert "rolling back every replica to checkpoint" in err
    assert "restarted Count/1 1 time: died: killed by SIGKILL" in err
    assert rows(db, "counts") == rows(clean, "counts")
    assert rows(db, "rows") == rows(clean, "rows")


def test_a_finished_run_resumed_says_so_and_exits_0(tmp_path):
    db, directory = tmp_path / "run.db", tmp_path / "ckpt"
    topo = write_topology(tmp_path, WORDS)
    env = {"FG_DB": str(db), "FG_N": "100", "FG_PAUSE": "0"}
    code, err = Launcher(str(topo), "--checkpoint", str(directory), cwd=tmp_path, env=env).wait()
    assert code == 0, err
    code, err = Launcher(str(topo), "--resume", str(directory), cwd=tmp_path, env=env).wait()
    assert code == 0, err
    assert "had finished already; nothing ran" in err
    assert len(rows(db, "rows")) == 100


def test_a_new_run_in_the_directory_of_an_unfinished_one_is_refused(tmp_path):
    topo, directory, env = started_and_killed(tmp_path, WORDS, checkpoints=1)
    code, err = Launcher(str(topo), "--checkpoint", str(directory), cwd=tmp_path, env=env).wait()
    assert code == 2
    assert "holds checkpoints of a run that did not finish" in err and "--resume" in err


def started_and_killed(tmp_path: Path, source: str, checkpoints: int = 2) -> tuple[Path, Path, dict[str, str]]:
    """A run of ``source`` killed after ``checkpoints`` complete checkpoints: (its topology file, its directory,
    its env)."""
    db, directory = tmp_path / "run.db", tmp_path / "ckpt"
    topo = write_topology(tmp_path, source)
    env = {"FG_DB": str(db), "FG_N": "100000"}
    launcher = Launcher(str(topo), "--checkpoint", str(directory), "--checkpoint-interval", "0.1", cwd=tmp_path,
                        env=env)
    try:
        wait_until(lambda: directory.exists() and manifests(directory) >= checkpoints, what="checkpoints")
    finally:
        launcher.kill_group()
    return topo, directory, env


@pytest.mark.parametrize(("change", "message"), [
    (lambda text: text.replace("self.counts[item[\"word\"]] = self.counts.get(item[\"word\"], 0) + 1",
                               "self.counts[item[\"word\"]] = self.counts.get(item[\"word\"], 0) + 2"),
     "node 'Count': its code changed"),
    (lambda text: text + "\n@topo.sink(inputs=Count)\ndef extra(row):\n    pass\n", "'extra'"),
    (lambda text: text.replace('topo.sink(SQLiteStore(DB, "rows", columns=["i", "word"]), inputs=numbers, '
                               'name="rows", parallelism=2)', ""), "'rows'"),
    (lambda text: text.replace('os.environ.get("FG_SOURCES", "1")', '"3"'), "source 'numbers'"),
    (lambda text: text.replace("    def snapshot(self):\n        return dict(self.counts)\n"
                               "    def restore(self, state):\n        self.counts = dict(state)\n", "").replace(
                                   "parallelism=2)\nclass Count", "parallelism=3)\nclass Count"), "node 'Count'"),
])
def test_resuming_a_changed_topology_is_refused_naming_the_node(tmp_path, change, message):
    topo, directory, env = started_and_killed(tmp_path, WORDS)
    before = sorted(path.name for path in directory.iterdir())
    topo.write_text(change(topo.read_text()))
    code, err = Launcher(str(topo), "--resume", str(directory), cwd=tmp_path, env=env).wait()
    assert code == 2, err
    assert message in err, err
    assert sorted(path.name for path in directory.iterdir()) == before  # nothing written


def test_a_resume_with_more_and_fewer_replicas_of_a_keyed_counter_splits_its_state_by_key(tmp_path):
    topo, directory, env = started_and_killed(tmp_path, WORDS)
    fast = {**env, "FG_PAUSE": "0"}
    topo.write_text(topo.read_text().replace("parallelism=2)\nclass Count", "parallelism=3)\nclass Count"))
    before = newest(directory)
    launcher = Launcher(str(topo), "--resume", str(directory), "--checkpoint-interval", "0.05", cwd=tmp_path,
                        env={**env, "FG_PAUSE": "0.0001"})
    try:
        wait_until(lambda: newest(directory) > before, what="a checkpoint of three replicas")
    finally:
        launcher.kill_group()
    topo.write_text(topo.read_text().replace("parallelism=3)\nclass Count", "parallelism=1)\nclass Count"))
    code, err = Launcher(str(topo), "--resume", str(directory), cwd=tmp_path, env=fast).wait()
    assert code == 0, err
    counts = dict(rows(tmp_path / "run.db", "counts"))
    assert counts == {f"w{k}": len(range(k, 100_000, 37)) for k in range(37)}
    assert len(rows(tmp_path / "run.db", "rows")) == 100_000


def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning_and_the_one_before_serves(tmp_path):
    topo, directory, env = started_and_killed(tmp_path, WORDS)
    sorted(directory.glob("ckpt-*/MANIFEST.json"))[-1].write_text("{ not json")
    code, err = Launcher(str(topo), "--resume", str(directory), cwd=tmp_path, env={**env, "FG_PAUSE": "0"}).wait()
    assert code == 0, err
    assert "skipping checkpoint" in err
    assert sum(n for _, n in rows(tmp_path / "run.db", "counts")) == 100_000  # the state: exactly once
    # the rows the damaged checkpoint committed, if it did, come again (docs/checkpoints.md): none is lost
    assert set(rows(tmp_path / "run.db", "rows")) == {(i, f"w{i % 37}") for i in range(100_000)}


def test_resuming_when_every_checkpoint_is_corrupt_is_refused(tmp_path):
    topo, directory, env = started_and_killed(tmp_path, WORDS)
    for manifest in directory.glob("ckpt-*/MANIFEST.json"):
        manifest.write_text("garbage")
    code, err = Launcher(str(topo), "--resume", str(directory), cwd=tmp_path, env=env).wait()
    assert code == 2, err
    assert "no complete checkpoint there reads back intact" in err


def test_a_state_that_cannot_be_pickled_fails_before_any_item_naming_the_attribute(tmp_path):
    source = """
    import threading
    from flowgraph import Topology

    topo = Topology("locked")

    @topo.source
    def numbers():
        yield from range(10)

    @topo.node(inputs=numbers)
    class Guarded:
        def setup(self):
            self.lock = threading.Lock()
        def process(self, n):
            return n

    @topo.sink(inputs=Guarded)
    def show(n):
        print("got", n)
    """
    topo = write_topology(tmp_path, source)
    launcher = Launcher(str(topo), "--checkpoint", str(tmp_path / "ckpt"), cwd=tmp_path, env={})
    code, err = launcher.wait()
    assert code == 2, err
    assert "node 'Guarded' cannot be checkpointed: its attribute 'lock' holds a lock" in err
    assert "snapshot()" in err and "restartable = True" in err
    assert not list((tmp_path / "ckpt").glob("ckpt-*"))


def test_checkpoints_inproc_give_the_same_results(tmp_path, monkeypatch):
    monkeypatch.setenv("FG_DB", str(tmp_path / "a.db"))
    monkeypatch.setenv("FG_N", "2000")
    topo = write_topology(tmp_path, WORDS)
    report = run(load_topology(str(topo)), inproc=True, checkpoint=tmp_path / "ckpt", checkpoint_interval_s=0.05,
                 progress=None)
    assert report.status == "ok" and report.checkpoints_s
    assert sum(n for _, n in rows(tmp_path / "a.db", "counts")) == 2000
    assert len(rows(tmp_path / "a.db", "rows")) == 2000


def test_a_failure_without_restarts_fails_the_run_and_resume_continues_it(tmp_path):
    source = WORDS.replace("    def process(self, item):\n", "    def process(self, item):\n"
                           "        if item['i'] == 1500 and not os.path.exists(os.environ['FG_DB'] + '.once'):\n"
                           "            open(os.environ['FG_DB'] + '.once', 'w').close()\n"
                           "            raise ValueError('once')\n")
    db, directory = tmp_path / "run.db", tmp_path / "ckpt"
    topo = write_topology(tmp_path, source)
    env = {"FG_DB": str(db), "FG_PAUSE": "0.001"}
    code, err = Launcher(str(topo), "--checkpoint", str(directory), "--checkpoint-interval", "0.2", cwd=tmp_path,
                         env=env).wait()
    assert code == 1 and "ValueError: once" in err
    code, err = Launcher(str(topo), "--resume", str(directory), cwd=tmp_path, env=env).wait()
    assert code == 0, err
    assert rows(db, "rows") == sorted((i, f"w{i % 37}") for i in range(3000))
    assert sum(n for _, n in rows(db, "counts")) == 3000


def test_run_refuses_resume_without_a_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("FG_DB", str(tmp_path / "a.db"))
    with pytest.raises(CheckpointError, match="give checkpoint=DIR"):
        run(load_topology(str(write_topology(tmp_path, WORDS))), resume=True, progress=None)


@pytest.mark.slow
def test_a_run_over_hosts_killed_and_resumed_commits_exactly_a_clean_runs_rows(test_hosts, tmp_path):
    """Parts travel to the launcher's directory; a resume reuses the hosts and their ssh settings kept there."""
    env = {"FG_SOURCES": "2"}
    clean = clean_run(tmp_path, WORDS, env)
    db, err = killed_and_resumed(tmp_path, WORDS, env, seed=6, kills=3, options=tuple(test_hosts.options()))
    assert "@h" in err  # the last run, resumed without --hosts, ran on the hosts again
    assert rows(db, "counts") == rows(clean, "counts")
    assert rows(db, "rows") == rows(clean, "rows")


def test_inproc_a_failure_with_restarts_rolls_every_thread_back_and_the_results_are_exact(tmp_path, monkeypatch):
    """A thread cannot be killed: a node that raises once makes the rollback stop every thread and start them
    again from the last checkpoint."""
    monkeypatch.setenv("FG_DB", str(tmp_path / "a.db"))
    monkeypatch.setenv("FG_PAUSE", "0.0005")
    source = WORDS.replace("    def process(self, item):\n", "    def process(self, item):\n"
                           "        if item['i'] == 1500 and not os.path.exists(os.environ['FG_DB'] + '.once'):\n"
                           "            open(os.environ['FG_DB'] + '.once', 'w').close()\n"
                           "            raise ValueError('once')\n")
    report = run(load_topology(str(write_topology(tmp_path, source))), inproc=True, checkpoint=tmp_path / "ckpt",
                 checkpoint_interval_s=0.1, restarts=1, progress=None)
    assert report["Count"].restarts == 1
    assert rows(tmp_path / "a.db", "rows") == sorted((i, f"w{i % 37}") for i in range(3000))
    assert sum(n for _, n in rows(tmp_path / "a.db", "counts")) == 3000


SEEKING = """
import os, time
from flowgraph import Topology
from nodes.sqlite import SQLiteStore

topo = Topology("seeking")

@topo.source
class Numbers:
    def setup(self):
        self.next = 0
    def generate(self):
        while self.next < 3000:
            time.sleep(0.0005)
            self.next += 1
            yield {"i": self.next - 1}
    def snapshot(self):
        return self.next
    def restore(self, state):
        self.next = state

topo.sink(SQLiteStore(os.environ["FG_DB"], "rows"), inputs=Numbers, name="rows")
"""


def test_a_class_source_with_its_own_snapshot_resumes_where_it_was(tmp_path):
    db, _ = killed_and_resumed(tmp_path, SEEKING, {}, seed=8, kills=2)
    assert rows(db, "rows") == [(i,) for i in range(3000)]
