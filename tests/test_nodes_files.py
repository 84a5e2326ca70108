"""Tests of ``nodes.files``: the file sources and ``WriteJsonLines``, on real files in ``tmp_path``.

Unit tests set the context of a replica by hand; the topology tests run the
nodes in a real run, once with threads and once with processes (``mode``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pickle
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flowgraph import RunFailed, Topology
from flowgraph.testing import replica_context, run_and_collect
from helpers import drive_sink
from nodes.files import FLUSH_LINES, ReadFiles, ReadJsonLines, ReadLines, WriteJsonLines

HINT = "paths are read on the replica's host, relative to its current directory"


@pytest.fixture
def as_replica() -> Iterator[Callable[..., None]]:
    """Sets the context of replica ``replica`` of ``parallelism``, with run parameters."""

    with contextlib.ExitStack() as stack:

        def set_replica(replica: int = 0, parallelism: int = 1, **params: str) -> None:
            stack.enter_context(replica_context("files", replica, parallelism, params=params))

        set_replica()
        yield set_replica


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def _generated(source: Any) -> list[Any]:
    source.setup()
    return list(source.generate())


def _books(tmp_path: Path) -> Path:
    """Four small books in ``tmp_path/books``, named so that sorted order is a, b, c, d."""
    for name in "abcd":
        _write(tmp_path / "books" / f"{name}.txt", f"{name}1\n{name}2\n")
    return tmp_path / "books"


def _lines_sink(topo: Topology, source: Any, **options: Any) -> None:
    """Declare ``source`` as source ``read`` of ``topo`` with a sink ``got`` after it."""
    read = topo.source(source, name="read", **options)

    @topo.sink(inputs=read)
    def got(item: Any) -> None:
        pass


def _write_sink(topo: Topology, sink: WriteJsonLines, items: list[Any], **options: Any) -> None:
    """Declare a source ``items`` yielding ``items`` and ``sink`` as sink ``out`` after it."""

    @topo.source
    def source() -> Iterator[Any]:
        yield from items

    topo.sink(sink, inputs=source, name="out", **options)


def _json_lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- ReadLines --------------------------------------------------------------------


def test_read_lines_yields_each_line_without_its_newline(tmp_path, as_replica):
    path = _write(tmp_path / "book.txt", "Call me Ishmael.\n\nSome years ago\r\nlast")

    assert _generated(ReadLines(path)) == ["Call me Ishmael.", "", "Some years ago", "last"]


def test_read_lines_with_strip_newline_false_keeps_each_newline(tmp_path, as_replica):
    path = _write(tmp_path / "book.txt", "one\ntwo\r\nthree")

    assert _generated(ReadLines(path, strip_newline=False)) == ["one\n", "two\n", "three"]


def test_read_lines_with_skip_blank_leaves_out_whitespace_only_lines(tmp_path, as_replica):
    path = _write(tmp_path / "book.txt", "one\n\n  \t\ntwo\n")

    assert _generated(ReadLines(path, skip_blank=True)) == ["one", "two"]


def test_read_lines_reads_the_files_of_a_pattern_in_sorted_order(tmp_path, as_replica):
    _write(tmp_path / "b.txt", "b\n")
    _write(tmp_path / "a.txt", "a\n")
    _write(tmp_path / "c.md", "not matched\n")

    assert _generated(ReadLines(str(tmp_path / "*.txt"))) == ["a", "b"]


def test_read_lines_takes_a_list_of_paths_and_patterns_and_reads_each_file_once(tmp_path, as_replica):
    _write(tmp_path / "a.txt", "a\n")
    _write(tmp_path / "b.txt", "b\n")
    _write(tmp_path / "sub" / "c.txt", "c\n")

    source = ReadLines([tmp_path / "b.txt", str(tmp_path / "*.txt"), str(tmp_path / "**" / "c.txt")])

    assert _generated(source) == ["a", "b", "c"]


def test_read_lines_resolves_relative_paths_against_the_current_directory(tmp_path, monkeypatch, as_replica):
    _books(tmp_path)
    monkeypatch.chdir(tmp_path / "books")

    assert _generated(ReadLines(["a.txt", "../books/[b]*"])) == ["a1", "a2", "b1", "b2"]


def test_read_lines_expands_the_home_directory(tmp_path, monkeypatch, as_replica):
    _books(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))

    assert _generated(ReadLines("~/books/a.txt")) == ["a1", "a2"]


def test_read_lines_gives_replica_r_of_n_the_files_r_r_plus_n_and_so_on(tmp_path, as_replica):
    books = _books(tmp_path)
    shares = []
    for replica in range(3):
        as_replica(replica, 3)
        shares.append(_generated(ReadLines(str(books / "*.txt"))))

    assert shares == [["a1", "a2", "d1", "d2"], ["b1", "b2"], ["c1", "c2"]]


def test_read_lines_gives_a_single_file_to_replica_0_only(tmp_path, as_replica):
    path = _write(tmp_path / "book.txt", "only\n")
    shares = []
    for replica in range(2):
        as_replica(replica, 2)
        shares.append(_generated(ReadLines(path)))

    assert shares == [["only"], []]


def test_read_lines_fails_setup_when_a_pattern_matches_no_file(tmp_path, monkeypatch, as_replica):
    monkeypatch.chdir(tmp_path)
    expected = (
        f"ReadLines: no file matches 'books/*.txt' (resolved as '{tmp_path}/books/*.txt' on host 'localhost'); "
        + HINT
    )

    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        ReadLines("books/*.txt").setup()


def test_read_lines_fails_setup_naming_the_one_pattern_of_a_list_that_matches_nothing(tmp_path, as_replica):
    _books(tmp_path)
    pattern = str(tmp_path / "books" / "*.md")
    expected = f"ReadLines: no file matches {pattern!r} (resolved as {pattern!r} on host 'localhost'); {HINT}"

    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        ReadLines([str(tmp_path / "books" / "*.txt"), pattern]).setup()


def test_read_lines_fails_setup_for_a_path_that_does_not_exist(tmp_path, monkeypatch, as_replica):
    monkeypatch.chdir(tmp_path)
    expected = f"ReadLines: no file 'absent.txt' (resolved as '{tmp_path}/absent.txt' on host 'localhost'); {HINT}"

    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        ReadLines("absent.txt").setup()


def test_read_lines_refuses_a_directory_and_suggests_a_pattern(tmp_path, monkeypatch, as_replica):
    _books(tmp_path)
    monkeypatch.chdir(tmp_path)
    expected = (
        f"ReadLines: 'books' is a directory ('{tmp_path}/books'); give a pattern such as 'books/*', "
        "or use ReadFiles to read every file under it"
    )

    with pytest.raises(IsADirectoryError, match=re.escape(expected)):
        ReadLines("books").setup()


def test_read_lines_skips_directories_that_a_pattern_matches(tmp_path, as_replica):
    books = _books(tmp_path)
    (books / "drafts.txt").mkdir()

    assert _generated(ReadLines(str(books / "*.txt"))) == ["a1", "a2", "b1", "b2", "c1", "c2", "d1", "d2"]


def test_read_lines_reads_a_file_whose_name_looks_like_a_pattern(tmp_path, as_replica):
    path = _write(tmp_path / "notes[1].txt", "first\n")

    assert _generated(ReadLines(path)) == ["first"]


def test_read_lines_decodes_with_the_given_encoding(tmp_path, as_replica):
    path = _write(tmp_path / "latin.txt", "café\ncrème\n", encoding="latin-1")

    assert _generated(ReadLines(path, encoding="latin-1")) == ["café", "crème"]


def test_read_lines_names_the_file_and_line_it_cannot_decode(tmp_path, as_replica):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"plain\nascii\ncaf\xe9\n")
    expected = (
        f"{path}, line 3: not valid utf-8 (invalid continuation byte); "
        "pass the file's encoding, e.g. encoding='latin-1'"
    )

    with pytest.raises(ValueError, match=re.escape(expected)):
        _generated(ReadLines(path))


def test_read_lines_rejects_an_unknown_encoding_when_declared():
    expected = "ReadLines got an unknown encoding 'utf-9'; try 'utf-8' or 'latin-1'"

    with pytest.raises(LookupError, match=re.escape(expected)):
        ReadLines("book.txt", encoding="utf-9")


def test_read_lines_rejects_an_empty_list_of_paths():
    with pytest.raises(ValueError, match=re.escape("ReadLines needs at least one path or pattern, got an empty list")):
        ReadLines([])


def test_read_lines_rejects_paths_that_are_not_paths():
    expected = "ReadLines takes a path, a glob pattern or a list of them, not dict: {'path': 'a.txt'}"

    with pytest.raises(TypeError, match=re.escape(expected)):
        ReadLines({"path": "a.txt"})


def test_read_lines_pickles_before_setup(tmp_path):
    copy = pickle.loads(pickle.dumps(ReadLines(tmp_path / "a.txt", skip_blank=True)))

    assert (copy.paths, copy.skip_blank) == ([str(tmp_path / "a.txt")], True)


def test_read_lines_in_a_run_reads_every_line_of_every_file_once_in_file_order(tmp_path, mode):
    books = _books(tmp_path)
    topo = Topology("read-lines")
    _lines_sink(topo, ReadLines(str(books / "*.txt")), parallelism=3)

    got = run_and_collect(topo, mode=mode)["got"]

    assert sorted(got) == ["a1", "a2", "b1", "b2", "c1", "c2", "d1", "d2"]
    for name in "abcd":
        assert [line for line in got if line[0] == name] == [f"{name}1", f"{name}2"]


def test_read_lines_in_a_run_resolves_a_relative_pattern_against_the_current_directory(tmp_path, monkeypatch, mode):
    _books(tmp_path)
    monkeypatch.chdir(tmp_path)
    topo = Topology("relative")
    _lines_sink(topo, ReadLines("books/[ab].txt"), parallelism=2)

    assert sorted(run_and_collect(topo, mode=mode)["got"]) == ["a1", "a2", "b1", "b2"]


def test_a_pattern_matching_no_file_fails_the_run_in_setup(tmp_path, mode):
    topo = Topology("nothing")
    _lines_sink(topo, ReadLines(str(tmp_path / "*.txt")))

    with pytest.raises(RunFailed) as raised:
        run_and_collect(topo, mode=mode)

    assert (raised.value.node, raised.value.phase) == ("read", "setup")
    assert f"ReadLines: no file matches '{tmp_path}/*.txt'" in str(raised.value)


# --- ReadJsonLines ----------------------------------------------------------------


def test_read_json_lines_yields_the_value_of_each_non_blank_line(tmp_path, as_replica):
    path = _write(tmp_path / "events.jsonl", '{"n": 1, "tags": ["a"]}\n\n  \n[2, null]\n"three"\n')

    assert _generated(ReadJsonLines(path)) == [{"n": 1, "tags": ["a"]}, [2, None], "three"]


def test_read_json_lines_names_the_file_and_line_number_of_a_bad_line(tmp_path, as_replica):
    path = _write(tmp_path / "events.jsonl", '{"n": 1}\n\n{"n": 2,}\n')
    expected = (
        f"{path}, line 3: not valid JSON (Expecting property name enclosed in double quotes at column 9): "
        """'{"n": 2,}'; ReadJsonLines reads one JSON value per line"""
    )

    with pytest.raises(ValueError, match=re.escape(expected)):
        _generated(ReadJsonLines(path))


def test_read_json_lines_shares_files_between_replicas_like_read_lines(tmp_path, as_replica):
    for n in range(3):
        _write(tmp_path / f"{n}.jsonl", f'{{"file": {n}}}\n')
    shares = []
    for replica in range(2):
        as_replica(replica, 2)
        shares.append(_generated(ReadJsonLines(str(tmp_path / "*.jsonl"))))

    assert shares == [[{"file": 0}, {"file": 2}], [{"file": 1}]]


def test_read_json_lines_in_a_run_yields_every_value(tmp_path, mode):
    for n in range(4):
        _write(tmp_path / "events" / f"{n}.jsonl", "".join(f'{{"file": {n}, "line": {i}}}\n' for i in range(50)))
    topo = Topology("read-json")
    _lines_sink(topo, ReadJsonLines(str(tmp_path / "events" / "*.jsonl")), parallelism=2)

    got = run_and_collect(topo, mode=mode)["got"]

    assert sorted((value["file"], value["line"]) for value in got) == [(n, i) for n in range(4) for i in range(50)]


# --- ReadFiles --------------------------------------------------------------------


def test_read_files_yields_path_name_size_and_bytes_of_each_file(tmp_path, as_replica):
    path = _write(tmp_path / "heron.html", "<p>Grey heron</p>")

    assert _generated(ReadFiles(path)) == [
        {"path": str(path), "name": "heron.html", "size": 17, "data": b"<p>Grey heron</p>"}
    ]


def test_read_files_in_text_mode_decodes_with_the_encoding(tmp_path, as_replica):
    path = _write(tmp_path / "cafe.txt", "café", encoding="latin-1")

    assert _generated(ReadFiles(path, mode="text", encoding="latin-1")) == [
        {"path": str(path), "name": "cafe.txt", "size": 4, "data": "café"}
    ]


def test_read_files_in_text_mode_names_the_file_it_cannot_decode(tmp_path, as_replica):
    path = tmp_path / "cafe.txt"
    path.write_bytes(b"ok\ncaf\xe9 au lait")
    expected = (
        f"{path}, line 2: not valid utf-8 (invalid continuation byte); "
        "pass the file's encoding, e.g. encoding='latin-1', or read it with mode='bytes'"
    )

    with pytest.raises(ValueError, match=re.escape(expected)):
        _generated(ReadFiles(path, mode="text"))


def test_read_files_in_path_mode_yields_no_data(tmp_path, as_replica):
    path = _write(tmp_path / "big.bin", "x" * 1000)

    assert _generated(ReadFiles(path, mode="path")) == [{"path": str(path), "name": "big.bin", "size": 1000}]


def test_read_files_reads_every_regular_file_under_a_directory_recursively_in_sorted_order(tmp_path, as_replica):
    site = tmp_path / "site"
    for name in ["index.html", "birds/heron.html", "birds/.hidden", "trees/oak/old.html", "a.css"]:
        _write(site / name, name)
    (site / "empty").mkdir()

    names = [item["path"] for item in _generated(ReadFiles(site, mode="path"))]

    assert names == [str(site / name) for name in ["a.css", "birds/.hidden", "birds/heron.html", "index.html",
                                                   "trees/oak/old.html"]]


def test_read_files_expands_directories_that_a_pattern_matches(tmp_path, as_replica):
    _write(tmp_path / "2023" / "jan" / "log.txt", "a")
    _write(tmp_path / "2024" / "feb.txt", "b")
    _write(tmp_path / "notes.txt", "c")

    items = _generated(ReadFiles(str(tmp_path / "20*"), mode="text"))

    assert [item["data"] for item in items] == ["a", "b"]


def test_read_files_shares_files_between_replicas(tmp_path, as_replica):
    books = _books(tmp_path)
    shares = []
    for replica in range(2):
        as_replica(replica, 2)
        shares.append([item["name"] for item in _generated(ReadFiles(books, mode="path"))])

    assert shares == [["a.txt", "c.txt"], ["b.txt", "d.txt"]]


def test_read_files_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match=re.escape("ReadFiles mode must be 'bytes', 'text' or 'path', got 'lines'")):
        ReadFiles("site", mode="lines")


def test_read_files_in_a_run_yields_one_item_per_file(tmp_path, mode):
    books = _books(tmp_path)
    topo = Topology("read-files")
    _lines_sink(topo, ReadFiles(books, mode="text"), parallelism=3)

    got = run_and_collect(topo, mode=mode)["got"]

    assert sorted((item["name"], item["data"]) for item in got) == [
        (f"{name}.txt", f"{name}1\n{name}2\n") for name in "abcd"
    ]


# --- WriteJsonLines ---------------------------------------------------------------




def test_write_json_lines_writes_one_json_line_per_item(tmp_path, as_replica):
    items = [{"word": "café", "count": 2}, ["a", 1], "text with\nnewline", None, 3.5]

    drive_sink(WriteJsonLines(tmp_path / "out.jsonl"), items)

    assert (tmp_path / "out-0.jsonl").read_text(encoding="utf-8").splitlines()[0] == '{"word": "café", "count": 2}'
    assert _json_lines(tmp_path / "out-0.jsonl") == items


def test_write_json_lines_per_replica_puts_the_replica_before_the_suffix(tmp_path, as_replica):
    for replica in range(2):
        as_replica(replica, 2)
        drive_sink(WriteJsonLines(tmp_path / "words.jsonl"), [{"replica": replica}])

    assert sorted(os.listdir(tmp_path)) == ["words-0.jsonl", "words-1.jsonl"]
    assert _json_lines(tmp_path / "words-1.jsonl") == [{"replica": 1}]


def test_write_json_lines_per_replica_fills_in_a_replica_placeholder(tmp_path, as_replica):
    as_replica(3, 4)
    sink = WriteJsonLines(str(tmp_path / "part-{replica}" / "words.jsonl"))

    drive_sink(sink, [1])

    assert sink.path == str(tmp_path / "part-3" / "words.jsonl")
    assert _json_lines(tmp_path / "part-3" / "words.jsonl") == [1]


def test_write_json_lines_per_replica_replaces_an_older_file(tmp_path, as_replica):
    _write(tmp_path / "out-0.jsonl", '"old"\n')

    drive_sink(WriteJsonLines(tmp_path / "out.jsonl"), ["new"])

    assert _json_lines(tmp_path / "out-0.jsonl") == ["new"]


def test_write_json_lines_shared_appends_to_the_one_file(tmp_path, as_replica):
    path = _write(tmp_path / "out.jsonl", '"old"\n')
    for replica in range(2):
        as_replica(replica, 2)
        drive_sink(WriteJsonLines(path, per_replica=False), [replica])

    assert _json_lines(path) == ["old", 0, 1]


def test_write_json_lines_writes_every_1000_lines_and_the_rest_at_finish(tmp_path, as_replica):
    assert FLUSH_LINES == 1000
    sink = WriteJsonLines(tmp_path / "out.jsonl")
    path = tmp_path / "out-0.jsonl"
    sink.setup()
    try:
        for n in range(FLUSH_LINES - 1):
            sink.process(n)
        assert path.read_bytes() == b""
        sink.process(FLUSH_LINES - 1)
        assert len(_json_lines(path)) == FLUSH_LINES
        sink.process("rest")
        assert len(_json_lines(path)) == FLUSH_LINES
        sink.finish()
        assert _json_lines(path)[-1] == "rest"
    finally:
        sink.teardown()


def test_write_json_lines_resolves_a_relative_path_at_setup_and_creates_parent_directories(
    tmp_path, monkeypatch, as_replica
):
    monkeypatch.chdir(tmp_path)
    sink = WriteJsonLines("out/deep/words.jsonl", per_replica=False)

    drive_sink(sink, [{"n": 1}])

    assert sink.path == str(tmp_path / "out" / "deep" / "words.jsonl")
    assert _json_lines(Path(sink.path)) == [{"n": 1}]


def test_write_json_lines_with_path_none_uses_the_out_run_parameter(tmp_path, monkeypatch, as_replica):
    monkeypatch.chdir(tmp_path)
    as_replica(out="from-params.jsonl")
    sink = WriteJsonLines(None)

    drive_sink(sink, ["x"])

    assert sink.path == str(tmp_path / "from-params-0.jsonl")


def test_write_json_lines_with_path_none_and_no_out_parameter_says_how_to_set_it(as_replica):
    expected = (
        "WriteJsonLines was given path=None and the run has no 'out' parameter; "
        "pass a path, or run with --set out=FILE"
    )

    with pytest.raises(ValueError, match=re.escape(expected)):
        WriteJsonLines(None).setup()


def test_write_json_lines_rejects_an_item_json_cannot_hold_naming_its_type(tmp_path, as_replica):
    sink = WriteJsonLines(tmp_path / "out.jsonl")
    sink.setup()
    try:
        expected = (
            "WriteJsonLines got a dict item that is not JSON-serializable (Object of type set is not JSON "
            "serializable): {'tags': {'a'}}; convert it upstream to dict, list, str, int, float, bool or None"
        )
        with pytest.raises(TypeError, match=re.escape(expected)):
            sink.process({"tags": {"a"}})
    finally:
        sink.teardown()


def test_write_json_lines_rejects_a_replica_placeholder_in_a_shared_file():
    expected = (
        "WriteJsonLines path 'out-{replica}.jsonl' holds {replica}, but per_replica=False writes one file "
        "for all replicas; drop {replica} from the path or set per_replica=True"
    )

    with pytest.raises(ValueError, match=re.escape(expected)):
        WriteJsonLines("out-{replica}.jsonl", per_replica=False)


def test_write_json_lines_teardown_without_finish_drops_buffered_lines_with_a_warning(tmp_path, as_replica, caplog):
    sink = WriteJsonLines(tmp_path / "out.jsonl")
    sink.setup()
    sink.process("lost")

    with caplog.at_level(logging.WARNING, logger="nodes.files"):
        sink.teardown()

    assert (tmp_path / "out-0.jsonl").read_bytes() == b""
    assert f"dropping 1 lines for {tmp_path / 'out-0.jsonl'} that were not written" in caplog.text


def test_write_json_lines_shared_waits_for_the_lock_another_writer_holds(tmp_path, as_replica):
    path = tmp_path / "out.jsonl"
    sink = WriteJsonLines(path, per_replica=False)
    sink.setup()
    sink.process("mine")
    finished = threading.Event()

    def finish() -> None:
        sink.finish()
        finished.set()

    with open(path, "ab") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        writer = threading.Thread(target=finish)
        writer.start()
        try:
            # The writer cannot get the lock while we hold it; it must still be waiting.
            assert not finished.wait(0.3)
            other.write(b'"theirs"\n')
            other.flush()
        finally:
            fcntl.flock(other, fcntl.LOCK_UN)
            writer.join(timeout=10)
    sink.teardown()

    assert finished.is_set()
    assert _json_lines(path) == ["theirs", "mine"]


def test_write_json_lines_pickles_before_setup(tmp_path):
    copy = pickle.loads(pickle.dumps(WriteJsonLines(tmp_path / "out.jsonl", per_replica=False)))

    assert (copy.path, copy.per_replica) == (str(tmp_path / "out.jsonl"), False)


def test_write_json_lines_in_a_run_writes_one_file_per_replica(tmp_path, mode):
    topo = Topology("write-per-replica")
    _write_sink(topo, WriteJsonLines(tmp_path / "out" / "n.jsonl"), [{"n": n} for n in range(100)], parallelism=2)

    run_and_collect(topo, mode=mode, collect=[])

    assert sorted(os.listdir(tmp_path / "out")) == ["n-0.jsonl", "n-1.jsonl"]
    written = _json_lines(tmp_path / "out" / "n-0.jsonl") + _json_lines(tmp_path / "out" / "n-1.jsonl")
    assert sorted(item["n"] for item in written) == list(range(100))


def test_write_json_lines_in_a_run_with_one_shared_file_never_interleaves_lines(tmp_path, mode):
    # Three writers flushing 1000 lines of 5 kB at a time (5 MB writes) into one file.
    items = [{"n": n, "pad": "x" * 5000} for n in range(3 * FLUSH_LINES + 17)]
    path = tmp_path / "all.jsonl"
    topo = Topology("write-shared")
    _write_sink(topo, WriteJsonLines(path, per_replica=False), items, parallelism=3)

    run_and_collect(topo, mode=mode, collect=[])

    written = _json_lines(path)  # a torn or interleaved line would not parse
    assert sorted(item["n"] for item in written) == list(range(len(items)))
    assert all(item["pad"] == "x" * 5000 for item in written)


def test_write_json_lines_output_reads_back_with_read_json_lines(tmp_path, mode):
    items = [{"word": word, "count": n} for n, word in enumerate(["heron", "wren", "café"])]
    writer = Topology("write")
    _write_sink(writer, WriteJsonLines(tmp_path / "words.jsonl"), items, parallelism=2)
    run_and_collect(writer, mode=mode, collect=[])
    reader = Topology("read-back")
    _lines_sink(reader, ReadJsonLines(str(tmp_path / "words-*.jsonl")), parallelism=2)

    got = run_and_collect(reader, mode=mode)["got"]

    assert sorted(got, key=lambda item: item["count"]) == items
