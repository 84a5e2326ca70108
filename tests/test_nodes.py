"""Tests of ``nodes.sqlite`` and of the bundled site in ``topologies/site``."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flowgraph import Topology
from flowgraph.testing import replica_context, run_and_collect
from helpers import drive_sink
from nodes.sqlite import SQLiteStore, count_rows
from nodes.text import parse_html, tokenize

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "topologies" / "site"


# --- SQLiteStore ------------------------------------------------------------------


def _column_types(path: Path, table: str) -> dict[str, str]:
    with sqlite3.connect(path) as connection:
        return {row[1]: row[2] for row in connection.execute(f'PRAGMA table_info("{table}")')}


def _select(path: Path, sql: str) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()




@pytest.fixture
def run_params() -> Iterator[Callable[..., None]]:
    """Sets the context of a running replica with the given run parameters."""
    with contextlib.ExitStack() as stack:
        yield lambda **params: stack.enter_context(replica_context("store", params=params))


def test_sqlite_store_creates_the_table_from_the_first_row_with_inferred_types(tmp_path):
    path = tmp_path / "pages.db"
    row = {"url": "u", "status": 200, "score": 0.5, "raw": b"\x00", "ok": True, "tags": ["a"], "meta": {}, "note": None}

    drive_sink(SQLiteStore(path, "pages"), [row])

    assert _column_types(path, "pages") == {
        "url": "TEXT", "status": "INTEGER", "score": "REAL", "raw": "BLOB",
        "ok": "INTEGER", "tags": "TEXT", "meta": "TEXT", "note": "",
    }
    assert _select(path, "SELECT url, status, score, raw, ok, note FROM pages") == [("u", 200, 0.5, b"\x00", 1, None)]


def test_sqlite_store_keeps_integers_in_a_column_whose_first_value_was_none(tmp_path):
    path = tmp_path / "pages.db"

    drive_sink(SQLiteStore(path, "pages"), [{"status": None}, {"status": 200}])

    assert _select(path, "SELECT typeof(status) FROM pages") == [("null",), ("integer",)]


def test_sqlite_store_creates_the_table_from_a_given_schema(tmp_path):
    path = tmp_path / "pages.db"
    schema = {"url": "TEXT PRIMARY KEY", "words": "INTEGER NOT NULL", "title": "TEXT"}

    drive_sink(SQLiteStore(path, "pages", schema=schema), [{"words": 3, "url": "u"}])

    assert _column_types(path, "pages") == {"url": "TEXT", "words": "INTEGER", "title": "TEXT"}
    assert _select(path, "SELECT url, words, title FROM pages") == [("u", 3, None)]


def test_sqlite_store_commits_every_batch_rows_rows_and_the_rest_in_finish(tmp_path):
    path = tmp_path / "pages.db"
    store = SQLiteStore(path, "pages", batch_rows=2)
    store.setup()
    try:
        store.process({"n": 1})
        assert _select(path, "SELECT name FROM sqlite_master") == [("pages",)]
        assert count_rows(path, "pages") == 0
        store.process({"n": 2})
        store.process({"n": 3})
        assert count_rows(path, "pages") == 2
        store.finish()
        assert count_rows(path, "pages") == 3
    finally:
        store.teardown()


def test_sqlite_store_stores_lists_and_dicts_as_json(tmp_path):
    path = tmp_path / "pages.db"

    drive_sink(SQLiteStore(path, "pages"), [{"top_words": [["heron", 3]], "meta": {"é": 1}}])

    assert _select(path, "SELECT top_words, meta FROM pages") == [('[["heron", 3]]', '{"é": 1}')]


def test_sqlite_store_rejects_a_key_that_is_not_a_column(tmp_path):
    path = tmp_path / "pages.db"
    store = SQLiteStore(path, "pages")
    store.setup()
    try:
        store.process({"url": "u", "status": 200})
        expected = (
            f"table 'pages' in {path} has no column 'colour' (columns: url, status); "
            "add it to schema=, pick the keys to store with columns=, or drop it upstream"
        )
        with pytest.raises(ValueError, match=re.escape(expected)):
            store.process({"url": "u", "colour": "grey"})
    finally:
        store.teardown()


def test_sqlite_store_stores_a_missing_key_as_null(tmp_path):
    path = tmp_path / "pages.db"

    drive_sink(SQLiteStore(path, "pages"), [{"url": "a", "title": "A"}, {"url": "b"}])

    assert _select(path, "SELECT url, title FROM pages") == [("a", "A"), ("b", None)]


def test_sqlite_store_with_columns_stores_only_those_keys(tmp_path):
    path = tmp_path / "pages.db"

    drive_sink(SQLiteStore(path, "pages", columns=["url", "words"]), [{"words": 4, "body": "<p>..", "url": "u"}])

    assert _select(path, "SELECT * FROM pages") == [("u", 4)]


def test_sqlite_store_rejects_columns_missing_from_the_schema():
    expected = (
        "SQLiteStore columns ['title'] of table 'pages' are not in schema (schema: url); "
        "add them to schema= or drop them from columns="
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        SQLiteStore("x.db", "pages", schema={"url": "TEXT"}, columns=["url", "title"])


_WRITER_SCRIPT = """
import sys
from nodes.sqlite import SQLiteStore

path, replica = sys.argv[1], int(sys.argv[2])
store = SQLiteStore(path, "pages", batch_rows=7)
print("ready", flush=True)
sys.stdin.readline()
try:
    store.setup()
    for n in range(100):
        store.process({"replica": replica, "n": n})
    store.finish()
finally:
    store.teardown()
"""


def test_stores_in_several_processes_can_create_and_fill_one_file_at_once(tmp_path):
    # Opening a new file from several processes at once is a race; three rounds
    # of four processes lost it often enough before SQLiteStore handled it.
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for round_ in range(3):
        path = tmp_path / f"shared-{round_}.db"
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", _WRITER_SCRIPT, str(path), str(replica)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
            )
            for replica in range(4)
        ]
        outputs = []
        try:
            for writer in writers:
                assert writer.stdout.readline() == "ready\n", writer.communicate(timeout=60)
            for writer in writers:  # all at once now
                writer.stdin.write("go\n")
                writer.stdin.flush()
            outputs = [writer.communicate(timeout=60) for writer in writers]
        finally:
            for writer in writers:
                if writer.poll() is None:
                    writer.kill()
                    writer.communicate()

        assert [writer.returncode for writer in writers] == [0, 0, 0, 0], outputs
        assert _select(path, "SELECT replica, COUNT(*) FROM pages GROUP BY replica") == [
            (0, 100), (1, 100), (2, 100), (3, 100)
        ]
        assert _select(path, "PRAGMA journal_mode") == [("wal",)]


def test_sqlite_store_resolves_a_relative_path_at_setup_and_creates_parent_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = SQLiteStore("out/crawl/pages.db", "pages")

    drive_sink(store, [{"url": "u"}])

    assert store.path == str(tmp_path / "out" / "crawl" / "pages.db")
    assert count_rows(store.path, "pages") == 1


def test_sqlite_store_with_path_none_uses_the_db_run_parameter(tmp_path, monkeypatch, run_params):
    monkeypatch.chdir(tmp_path)
    run_params(db="from-params.db")
    store = SQLiteStore(None, "pages")

    drive_sink(store, [{"url": "u"}])

    assert store.path == str(tmp_path / "from-params.db")
    assert count_rows(store.path, "pages") == 1


def test_sqlite_store_with_path_none_and_no_db_parameter_says_how_to_set_it(run_params):
    run_params()
    expected = (
        "SQLiteStore for table 'pages' was given path=None and the run has no 'db' parameter; "
        "pass a path, or run with --set db=FILE"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        SQLiteStore(None, "pages").setup()


def test_sqlite_store_teardown_after_a_failed_setup_does_not_raise(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    store = SQLiteStore(tmp_path / "a-file" / "pages.db", "pages")

    with pytest.raises(OSError):
        store.setup()
    store.teardown()


def test_sqlite_store_teardown_keeps_the_rows_finish_wrote(tmp_path):
    path = tmp_path / "pages.db"
    store = SQLiteStore(path, "pages")
    store.setup()
    store.process({"url": "u"})
    store.finish()

    store.teardown()

    assert count_rows(path, "pages") == 1


def test_sqlite_store_teardown_without_finish_drops_buffered_rows_with_a_warning(tmp_path, caplog):
    path = tmp_path / "pages.db"
    store = SQLiteStore(path, "pages", batch_rows=10)
    store.setup()
    store.process({"url": "u"})

    with caplog.at_level(logging.WARNING, logger="nodes.sqlite"):
        store.teardown()

    assert count_rows(path, "pages") == 0
    assert f"dropping 1 rows for table 'pages' in {path}" in caplog.text


def test_sqlite_store_rejects_a_row_that_is_not_a_dict(tmp_path):
    store = SQLiteStore(tmp_path / "pages.db", "pages")
    store.setup()
    try:
        expected = "SQLiteStore for table 'pages' takes dict rows, not list: ['u']"
        with pytest.raises(TypeError, match=re.escape(expected)):
            store.process(["u"])
    finally:
        store.teardown()


def test_sqlite_store_pickles_before_setup(tmp_path):
    copy = pickle.loads(pickle.dumps(SQLiteStore(tmp_path / "pages.db", "pages", batch_rows=3)))

    assert (copy.table, copy.batch_rows) == ("pages", 3)


def test_count_rows_of_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SQLite database at"):
        count_rows(tmp_path / "absent.db", "pages")


# --- the bundled site -------------------------------------------------------------


def _site_pages() -> dict[str, Path]:
    return {path.relative_to(SITE).as_posix(): path for path in sorted(SITE.rglob("*.html"))}


def _parsed_site() -> dict[str, dict[str, Any]]:
    return {
        name: parse_html(path.read_text(encoding="utf-8"), base_url="http://site.test/" + name)
        for name, path in _site_pages().items()
    }


def test_site_has_about_forty_pages_under_400_kb():
    total_bytes = sum(path.stat().st_size for path in SITE.rglob("*") if path.is_file())

    assert 35 <= len(_site_pages()) <= 45
    assert total_bytes < 400_000


def test_site_pages_each_have_a_title_a_heading_and_three_to_eight_links():
    for name, path in _site_pages().items():
        parsed = parse_html(path.read_text(encoding="utf-8"), base_url="http://site.test/" + name)
        assert parsed["title"], name
        assert "<h1>" in path.read_text(encoding="utf-8"), name
        assert 3 <= len(parsed["links"]) <= 8, (name, parsed["links"])


def test_site_pages_hold_150_to_600_words():
    for name, parsed in _parsed_site().items():
        assert 150 <= len(tokenize(parsed["text"])) <= 600, name


def test_site_every_page_is_reachable_from_the_index():
    links = {name: parsed["links"] for name, parsed in _parsed_site().items()}
    seen = {"http://site.test/index.html"}
    todo = ["index.html"]
    while todo:
        for link in links[todo.pop()]:
            name = link.removeprefix("http://site.test/")
            if name in links and link not in seen:
                seen.add(link)
                todo.append(name)

    assert seen == {"http://site.test/" + name for name in links}


def test_site_links_to_a_few_missing_pages_and_once_outside():
    pages = _parsed_site()
    inside = {link.removeprefix("http://site.test/") for p in pages.values() for link in p["links"]}
    outside = [(name, link) for name, p in pages.items() for link in p["links"] if "//site.test/" not in link]
    missing = {name for name in inside if "//" not in name and name not in pages}

    assert 2 <= len(missing) <= 6
    assert outside == [("about.html", "https://example.org/")]


def test_site_sitemap_lists_every_page_and_two_that_do_not_exist():
    listed = (SITE / "sitemap.txt").read_text(encoding="utf-8").split()
    pages = set(_site_pages())

    assert len(listed) == len(set(listed))
    assert pages <= set(listed)
    assert sorted(set(listed) - pages) == ["birds/grey-wagtail.html", "trees/elm.html"]


def test_sqlite_store_with_replace_starts_each_run_from_an_empty_table(tmp_path):
    from nodes.sqlite import SQLiteStore, count_rows

    db = tmp_path / "replace.db"
    for _ in range(2):
        topo = Topology("replace")
        topo.source(lambda: ({"n": n} for n in range(5)), name="rows")
        topo.sink(SQLiteStore(str(db), "rows", replace=True), inputs="rows", name="store")
        run_and_collect(topo, mode="inproc")
    assert count_rows(db, "rows") == 5


def test_sqlite_store_refuses_replace_at_parallelism_above_one(tmp_path):
    from flowgraph import RunFailed, run
    from nodes.sqlite import SQLiteStore

    topo = Topology("replace")
    topo.source(lambda: iter([{"n": 1}]), name="rows")
    topo.sink(SQLiteStore(str(tmp_path / "x.db"), "rows", replace=True), inputs="rows", name="store", parallelism=2)
    with pytest.raises(RunFailed, match="has replace=True at parallelism 2: each replica would drop the rows"):
        run(topo, inproc=True)
