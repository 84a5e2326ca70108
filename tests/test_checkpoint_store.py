"""Checkpoints as data: the store on disk, the fingerprint a resumed topology is checked against, rescaling by key.

No processes run here but one ``python -c`` (the code hash is the same in another interpreter).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import flowgraph
from flowgraph import CheckpointError, Topology, by_key, shuffle
from flowgraph.checkpoint import store as store_module
from flowgraph.checkpoint.compat import check_compatible, code_hash, fingerprint
from flowgraph.checkpoint.rescale import assign_parts, split_keyed
from flowgraph.checkpoint.store import Checkpoint, CheckpointStore, Part
from flowgraph.model.dsl import TopologySpec
from flowgraph.model.plan import plan_run
from flowgraph.wire.keys import replica_for_key

REPO = Path(flowgraph.__file__).resolve().parent.parent
FINGERPRINT = {"topology": "wc", "nodes": {"count": {"kind": "node", "parallelism": 2}}}
PARTS = [Part("count/0", b"\x00state\xff", 0, False), Part("count/1", None, 0, True), Part("lines/0", None, 41)]


def complete_checkpoint(store: CheckpointStore, checkpoint: int, parts: list[Part] = PARTS,
                        finished: bool = False) -> None:
    for part in parts:
        store.write_part(checkpoint, part)
    store.complete(checkpoint, [part.replica for part in parts], FINGERPRINT, finished=finished)


def checkpoint_ids(store: CheckpointStore) -> list[str]:
    return sorted(path.name for path in store.directory.iterdir() if path.name.startswith("ckpt-"))


# --- the store ---


def test_a_completed_checkpoint_reads_back_as_written(tmp_path):
    store = CheckpointStore(tmp_path / "made" / "with parents")
    complete_checkpoint(store, 42, finished=True)
    assert store.latest() == Checkpoint(42, {part.replica: part for part in PARTS}, FINGERPRINT, True)
    assert sorted(path.name for path in (store.directory / "ckpt-000042").iterdir()) == [
        "MANIFEST.json", "count.0.part", "count.1.part", "lines.0.part"]


def test_a_part_written_again_replaces_the_first(tmp_path):
    store = CheckpointStore(tmp_path)
    store.write_part(1, Part("count/0", b"first"))
    complete_checkpoint(store, 1, [Part("count/0", b"second")])
    checkpoint = store.latest()
    assert checkpoint is not None and checkpoint.parts["count/0"].state == b"second"


def test_complete_refuses_a_checkpoint_missing_a_part_and_writes_no_manifest(tmp_path):
    store = CheckpointStore(tmp_path)
    store.write_part(3, PARTS[0])
    with pytest.raises(CheckpointError, match=re.escape(
            f"checkpoint 3 cannot be completed: no part was written in {tmp_path / 'ckpt-000003'} for "
            "count/1, lines/0")):
        store.complete(3, [part.replica for part in PARTS], FINGERPRINT)
    assert not (tmp_path / "ckpt-000003" / "MANIFEST.json").exists()
    assert store.latest() is None


@pytest.mark.parametrize(("complete", "incomplete", "left"), [
    ([1], [], [1]),
    ([1, 2], [], [1, 2]),
    ([1, 2, 3, 4], [], [3, 4]),
    ([1, 3, 5], [2, 4], [3, 5]),  # an incomplete one older than the newest complete is gone
    ([1, 2, 3], [4], [2, 3, 4]),  # a newer incomplete one may still be being written
])
def test_complete_keeps_the_two_newest_complete_checkpoints(tmp_path, complete, incomplete, left):
    store = CheckpointStore(tmp_path)
    for checkpoint in sorted(complete + incomplete):
        if checkpoint in complete:
            complete_checkpoint(store, checkpoint)
        else:
            store.write_part(checkpoint, PARTS[0])
    assert checkpoint_ids(store) == [f"ckpt-{checkpoint:06d}" for checkpoint in left]
    checkpoint = store.latest()
    assert checkpoint is not None and checkpoint.id == complete[-1]


def corrupt_manifest(directory: Path) -> None:
    (directory / "MANIFEST.json").write_text('{"id": 2, "parts": ')


def remove_part(directory: Path) -> None:
    (directory / "count.1.part").unlink()


def flip_a_byte(directory: Path) -> None:
    path = directory / "count.0.part"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def shorten(directory: Path) -> None:
    path = directory / "lines.0.part"
    path.write_bytes(path.read_bytes()[:-1])


def list_a_foreign_file(directory: Path) -> None:
    manifest = (directory / "MANIFEST.json").read_text()
    (directory / "MANIFEST.json").write_text(manifest.replace('"count.0.part"', '"../run.json"'))


@pytest.mark.parametrize(("damage", "why"), [
    (corrupt_manifest, "manifest unreadable (Expecting value"),
    (remove_part, "part count/1 missing (count.1.part)"),
    (flip_a_byte, "part count/0 corrupt: sha256 mismatch"),
    (shorten, "part lines/0 corrupt: "),
    (list_a_foreign_file, "manifest unreadable (part count/0 listed as '../run.json', not a file of the checkpoint)"),
])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before_with_a_warning(tmp_path, caplog, damage, why):
    store = CheckpointStore(tmp_path)
    complete_checkpoint(store, 1)
    complete_checkpoint(store, 2)
    damage(tmp_path / "ckpt-000002")
    with caplog.at_level(logging.WARNING, logger="flowgraph.checkpoint.store"):
        checkpoint = store.latest()
    assert checkpoint is not None and checkpoint.id == 1
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert caplog.records[0].getMessage().startswith(f"skipping checkpoint {tmp_path / 'ckpt-000002'}: {why}")


def test_latest_is_none_when_every_checkpoint_is_damaged(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    complete_checkpoint(store, 1)
    flip_a_byte(tmp_path / "ckpt-000001")
    with caplog.at_level(logging.WARNING, logger="flowgraph.checkpoint.store"):
        assert store.latest() is None
    assert "ckpt-000001: part count/0 corrupt" in caplog.text


def test_a_checkpoint_without_manifest_is_ignored_silently(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    complete_checkpoint(store, 1)
    for part in PARTS:
        store.write_part(2, part)
    with caplog.at_level(logging.DEBUG, logger="flowgraph.checkpoint.store"):
        checkpoint = store.latest()
    assert checkpoint is not None and checkpoint.id == 1
    assert caplog.records == []


def test_next_id_never_reuses_an_id(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.next_id() == 1
    store.write_part(store.next_id(), PARTS[0])  # taken, never completed
    assert store.next_id() == 2
    for _ in range(3):
        complete_checkpoint(store, store.next_id())
    assert checkpoint_ids(store) == ["ckpt-000003", "ckpt-000004"]
    assert store.next_id() == 5
    assert CheckpointStore(tmp_path).next_id() == 5  # a resumed run


def test_run_settings_round_trip_through_run_json(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.load_run() is None
    store.save_run({"path": "topo.py:wc", "restarts": 3, "hosts": ["a", "b"]})
    store.save_run({"path": "topo.py:wc", "restarts": 2})
    assert store.load_run() == {"path": "topo.py:wc", "restarts": 2}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.json"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_an_unreadable_run_json_is_a_checkpoint_error(tmp_path, content):
    (tmp_path / "run.json").write_text(content)
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "run.json"))):
        CheckpointStore(tmp_path).load_run()


def test_a_write_that_fails_halfway_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save_run({"restarts": 1})

    def crash(source: Any, destination: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(store_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        store.save_run({"restarts": 2})
    assert store.load_run() == {"restarts": 1}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.json"]


def test_the_committed_marker_names_the_final_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.committed() is None
    store.mark_committed(7)
    assert store.committed() == 7
    assert CheckpointStore(tmp_path).committed() == 7
    (tmp_path / "COMMITTED").write_text('{"checkpoint": "7"}')
    with pytest.raises(CheckpointError, match="names no checkpoint"):
        store.committed()


def test_clear_leaves_nothing_of_the_run_before(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save_run({"restarts": 1})
    complete_checkpoint(store, 1)
    complete_checkpoint(store, 2, finished=True)
    store.write_part(3, PARTS[0])
    store.mark_committed(2)
    store.clear()
    assert list(tmp_path.iterdir()) == []
    assert (store.latest(), store.load_run(), store.committed(), store.next_id()) == (None, None, None, 1)


def test_a_directory_that_cannot_be_made_is_a_checkpoint_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match=re.escape(f"cannot keep checkpoints in {tmp_path / 'file' / 'dir'}")):
        CheckpointStore(tmp_path / "file" / "dir")


# --- the code hash ---

MODULE = '''
import math


def count(words):
    """Count the words."""
    seen = {w for w in words if w not in {"a", "an", "the"}}
    return len(seen) + math.floor(0.5)


class Count:
    limit = 3

    def process(self, item):
        return [item for _ in range(self.limit)]

    @classmethod
    def make(cls):
        return cls()

    @property
    def size(self):
        return lambda: self.limit
'''

COMMENTED = MODULE.replace("import math\n", "import math\n\n\n# a comment\n\n").replace(
    "        return [item", "        # another one\n\n        return [item")
EDITED = MODULE.replace("range(self.limit)", "range(self.limit + 1)").replace('"an", ', "")


def load(tmp_path: Path, name: str, source: str) -> Any:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_code_hash_is_the_same_in_another_interpreter(tmp_path):
    """Another process salts str hashes differently (frozenset constants), and has other ids."""
    module = load(tmp_path, "wordcount", MODULE)
    script = ("import sys, wordcount; from flowgraph.checkpoint.compat import code_hash; "
              "print(code_hash(wordcount.count), code_hash(wordcount.Count), code_hash(wordcount.Count()))")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [code_hash(module.count), code_hash(module.Count), code_hash(module.Count)]


def test_code_hash_ignores_comments_blank_lines_and_the_file(tmp_path):
    before = load(tmp_path, "before", MODULE)
    after = load(tmp_path, "after", COMMENTED)
    assert code_hash(after.count) == code_hash(before.count)
    assert code_hash(after.Count) == code_hash(before.Count)


@pytest.mark.parametrize("name", ["count", "Count"])
def test_code_hash_changes_with_the_code(tmp_path, name):
    before = load(tmp_path, "before", MODULE)
    after = load(tmp_path, "after", EDITED)
    assert code_hash(getattr(after, name)) != code_hash(getattr(before, name))


def test_code_hash_of_a_class_covers_its_bases_properties_and_class_methods(tmp_path):
    module = load(tmp_path, "base", MODULE)
    properties = load(tmp_path, "properties", MODULE.replace("lambda: self.limit", "lambda: self.limit * 2"))
    methods = load(tmp_path, "methods", MODULE.replace("return cls()", "return cls"))
    assert code_hash(properties.Count) != code_hash(module.Count) != code_hash(methods.Count)
    child = type("Child", (module.Count,), {})
    edited_child = type("Child", (properties.Count,), {})
    assert code_hash(child) != code_hash(edited_child)


# --- compatibility ---


class Count:
    """Counts per word; its state is a dict by word."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def process(self, word: str) -> None:
        self.counts[word] = self.counts.get(word, 0) + 1

    def snapshot(self) -> dict[str, int]:
        return self.counts

    def restore(self, state: dict[str, int]) -> None:
        self.counts = state


class CountTwice(Count):
    def process(self, word: str) -> None:
        self.counts[word] = self.counts.get(word, 0) + 2


class Tally:
    """Keeps state without snapshot(): a checkpoint stores its __dict__, which is not by key."""

    def __init__(self) -> None:
        self.total = 0

    def process(self, word: str) -> None:
        self.total += 1


class Cached:
    """Restartable: its setup() rebuilds what it needs, so it keeps no state."""

    restartable = True

    def process(self, word: str) -> str:
        return word


class Splitter:
    """A splitter that keeps state (it is not restartable)."""

    def process(self, line: str) -> list[str]:
        return line.split()


def split(line: str) -> list[str]:
    return line.split()


def split_lower(line: str) -> list[str]:
    return line.lower().split()


def word_count(*, lines: int = 1, splitter: Any = split, splitters: int = 1, counter: Any = Count,
               counters: int = 2, grouping: Any = None, store_kind: str = "sink", audit: bool = False) -> TopologySpec:
    """lines → split → count (by word) → store; each keyword changes one thing."""
    topo = Topology("wc")

    def read_lines():
        yield from ["a b", "b c"]

    topo.source(read_lines, name="lines", parallelism=lines)
    topo.node(splitter, inputs="lines", name="split", parallelism=splitters)
    topo.node(counter, inputs={"split": grouping or by_key(lambda word: word)}, name="count", parallelism=counters)
    getattr(topo, store_kind)(lambda row: None, inputs="count", name="store")
    if audit:
        topo.sink(lambda row: None, inputs="count", name="audit")
    return topo.spec()


def test_the_fingerprint_says_what_each_node_keeps():
    nodes = fingerprint(word_count())["nodes"]
    assert {name: (node["kind"], node["parallelism"], node["stateful"], node["keyed"], node["snapshot"])
            for name, node in nodes.items()} == {
        "lines": ("source", 1, True, False, False),
        "split": ("node", 1, False, False, False),
        "count": ("node", 2, True, True, True),
        "store": ("sink", 1, False, False, False),
    }
    assert nodes["count"]["code"] == code_hash(Count)
    assert fingerprint(word_count(counter=Cached))["nodes"]["count"]["stateful"] is False


@pytest.mark.parametrize(("saved", "current", "node"), [
    ({}, {"audit": True}, "audit"),  # added
    ({"audit": True}, {}, "audit"),  # removed
    ({}, {"store_kind": "node"}, "store"),  # kind
    ({}, {"counter": CountTwice}, "count"),  # code of a node with state
    ({}, {"splitter": Splitter}, "split"),  # keeps state now, kept none then
    ({}, {"lines": 2}, "lines"),  # a source's parallelism
    ({"counter": Tally}, {"counter": Tally, "counters": 3}, "count"),  # keyed, but its state is its __dict__
    ({"grouping": shuffle()}, {"grouping": shuffle(), "counters": 3}, "count"),  # a snapshot, but not keyed
    ({"grouping": shuffle()}, {"counters": 3}, "count"),  # keyed now, not then
])
def test_check_compatible_refuses_what_the_checkpoint_cannot_serve(saved, current, node):
    with pytest.raises(CheckpointError, match=re.escape(f"{node!r}")) as raised:
        check_compatible(fingerprint(word_count(**saved)), fingerprint(word_count(**current)))
    assert str(raised.value).endswith("; undo the change to resume, or run it without --resume to start again")


def test_a_refusal_names_every_node_what_changed_and_what_to_do():
    expected = ("the checkpoint cannot serve topology 'wc': source 'lines': its parallelism changed from 1 to 3, "
                "and a source's position cannot be split (resume with parallelism=1); node 'count': its code changed "
                "since the checkpoint, and the new code may not read the state it stored; undo the change to "
                "resume, or run it without --resume to start again")
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        check_compatible(fingerprint(word_count()), fingerprint(word_count(counter=CountTwice, lines=3)))


@pytest.mark.parametrize(("saved", "current"), [
    ({}, {}),
    ({}, {"splitter": split_lower, "splitters": 4}),  # no state: any code, any parallelism
    ({}, {"counters": 5}),  # by key, with a snapshot by key
    ({"counters": 3}, {"counters": 1}),
    ({"counter": Tally}, {"counter": Cached, "counters": 4}),  # kept state then, keeps none now
    ({"splitter": Splitter}, {}),
])
def test_check_compatible_allows_what_the_checkpoint_can_serve(saved, current):
    check_compatible(fingerprint(word_count(**saved)), fingerprint(word_count(**current)))


# --- rescaling ---


@pytest.mark.parametrize("replicas", [1, 2, 3, 4, 5])
def test_growing_by_one_replica_moves_about_one_key_in_n_plus_one(replicas):
    keys = [f"word-{number}" for number in range(10_000)]
    states = split_keyed("count", [{key: len(key) for key in keys}], replicas)
    grown = split_keyed("count", states, replicas + 1)
    moved = [key for index, state in enumerate(states) for key in state if key not in grown[index]]
    assert abs(len(moved) / len(keys) - 1 / (replicas + 1)) <= 0.03
    assert set(moved) == set(grown[replicas])  # every key that moves goes to the new replica
    assert {key: value for state in grown for key, value in state.items()} == {key: len(key) for key in keys}
    assert all(replica_for_key(key, replicas + 1) == index for index, state in enumerate(grown) for key in state)


def test_split_keyed_refuses_a_state_that_is_not_a_mapping():
    expected = ("node 'count': replica 1's state is a list, not a mapping by its by_key key, so it cannot be split "
                "over 3 replicas; resume with its old parallelism, or make snapshot() return a dict keyed by the key")
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        split_keyed("count", [None, ["a"]], 3)


def test_split_keyed_refuses_a_key_held_by_two_replicas():
    with pytest.raises(CheckpointError, match=re.escape("node 'count': key 'b' is in the states of both replica 0 "
                                                        "and replica 2")):
        split_keyed("count", [{"a": 1, "b": 2}, {}, {"b": 3}], 2)


def stored(spec: TopologySpec, parts: list[Part]) -> Checkpoint:
    return Checkpoint(9, {part.replica: part for part in parts}, fingerprint(spec), False)


def old_parts(finished: tuple[bool, bool] = (False, False)) -> list[Part]:
    """A checkpoint of word_count(splitters=2): two split replicas, two count replicas with their counts."""
    return [
        Part("lines/0", None, 17),
        Part("split/0", None, finished=finished[0]),
        Part("split/1", None, finished=finished[1]),
        Part("count/0", cloudpickle.dumps({"a": 1, "b": 2})),
        Part("count/1", cloudpickle.dumps({"c": 3})),
        Part("store/0", None),
    ]


def test_assign_parts_keeps_the_parts_of_nodes_whose_parallelism_is_the_same():
    spec = word_count(splitters=2)
    checkpoint = stored(spec, old_parts())
    assert assign_parts(checkpoint, plan_run(spec), fingerprint(spec)) == checkpoint.parts


def test_assign_parts_gives_a_rescaled_stateless_node_empty_parts():
    spec = word_count(splitters=3)
    parts = assign_parts(stored(word_count(splitters=2), old_parts((True, True))), plan_run(spec), fingerprint(spec))
    assert [parts[f"split/{index}"] for index in range(3)] == [
        Part(f"split/{index}", None, 0, finished=True) for index in range(3)]
    assert parts["lines/0"] == Part("lines/0", None, 17)


def test_assign_parts_splits_a_rescaled_keyed_node_by_key():
    spec = word_count(splitters=2, counters=3)
    parts = assign_parts(stored(word_count(splitters=2), old_parts()), plan_run(spec), fingerprint(spec))
    assert sorted(parts) == ["count/0", "count/1", "count/2", "lines/0", "split/0", "split/1", "store/0"]
    counts = [cloudpickle.loads(parts[f"count/{index}"].state) for index in range(3)]
    assert {key: value for state in counts for key, value in state.items()} == {"a": 1, "b": 2, "c": 3}
    assert all(replica_for_key(key, 3) == index for index, state in enumerate(counts) for key in state)
    assert all(not parts[f"count/{index}"].finished for index in range(3))


def test_assign_parts_refuses_to_rescale_a_node_whose_replicas_had_not_all_finished():
    spec = word_count(splitters=3)
    with pytest.raises(CheckpointError, match=re.escape(
            "node 'split': split/0 had finished at the checkpoint and split/1 had not, so its replicas cannot "
            "change in number; resume with its old parallelism (2)")):
        assign_parts(stored(word_count(splitters=2), old_parts((True, False))), plan_run(spec), fingerprint(spec))


def test_assign_parts_checks_compatibility_first():
    spec = word_count(splitters=2, counter=CountTwice)
    with pytest.raises(CheckpointError, match="node 'count': its code changed"):
        assign_parts(stored(word_count(splitters=2), old_parts()), plan_run(spec), fingerprint(spec))
