"""``SQLiteStore`` in runs with checkpoints: a two-phase-commit sink whose rows are in its table exactly once.

The hooks are called directly, in the order the runtime calls them
(``flowgraph/runtime/snapshots.py``): ``setup()`` with ``context().checkpoint``
still 0; then ``rollback(n)`` (and ``commit(n)`` if ``n > 0``) with the
checkpoint the replica starts from; at a barrier ``precommit()`` and only then
``context().checkpoint = barrier``; at the end ``finish()`` and ``precommit()``.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowgraph import Context
from flowgraph.testing import replica_context
from helpers import drive_sink
from nodes.sqlite import SQLiteStore, count_rows


@contextlib.contextmanager
def started(
    path: Path, *, checkpoint: int = 0, replica: int = 0, parallelism: int = 1, incarnation: int = 0,
    **options: Any,
) -> Iterator[tuple[SQLiteStore, Context]]:
    """A set-up store of table ``pages`` started from ``checkpoint``, as the runtime starts a replica."""
    with replica_context("store", replica=replica, parallelism=parallelism, checkpointing=True,
                         checkpoint=checkpoint) as ctx:
        ctx.incarnation = incarnation
        store = SQLiteStore(path, "pages", **options)
        store.setup()
        try:
            store.rollback(checkpoint)
            if checkpoint:
                store.commit(checkpoint)
            yield store, ctx
        finally:
            store.teardown()


def barrier(store: SQLiteStore, ctx: Context, checkpoint: int) -> None:
    """The replica passes barrier ``checkpoint``: pre-commit, then go on after it."""
    store.precommit()
    ctx.checkpoint = checkpoint


def process(store: SQLiteStore, numbers: range | list[int], replica: int = 0) -> None:
    for n in numbers:
        store.process({"replica": replica, "n": n})


def visible(path: Path) -> list[int]:
    return [n for (n,) in select(path, "SELECT n FROM pages ORDER BY rowid")]


def staged(path: Path) -> list[tuple[int, int]]:
    return select(path, "SELECT n, _checkpoint FROM pages__staged ORDER BY rowid")


def select(path: Path, sql: str) -> list[Any]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def tables(path: Path) -> list[str]:
    return [name for (name,) in select(path, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]


def test_checkpointed_rows_are_staged_and_invisible_until_their_checkpoint_is_committed(tmp_path):
    path = tmp_path / "pages.db"
    with started(path, batch_rows=2) as (store, ctx):
        process(store, range(3))
        barrier(store, ctx, 1)

        assert count_rows(path, "pages") == 0
        assert staged(path) == [(0, 0), (1, 0), (2, 0)]

        store.commit(1)

        assert visible(path) == [0, 1, 2]
        assert staged(path) == []


def test_rows_are_tagged_with_the_checkpoint_of_the_replica_when_they_are_processed(tmp_path):
    path = tmp_path / "pages.db"
    with started(path, batch_rows=100) as (store, ctx):
        process(store, [0, 1])
        ctx.checkpoint = 1  # the buffer now holds rows of two epochs
        process(store, [2, 3])
        store.precommit()

        assert staged(path) == [(0, 0), (1, 0), (2, 1), (3, 1)]


def test_commit_moves_exactly_the_rows_before_its_barrier(tmp_path):
    path = tmp_path / "pages.db"
    with started(path, batch_rows=1) as (store, ctx):
        process(store, [0, 1])
        barrier(store, ctx, 1)
        process(store, [2, 3])
        barrier(store, ctx, 2)
        process(store, [4])  # written (batch_rows=1), after barrier 2

        store.commit(1)
        assert visible(path) == [0, 1]
        assert staged(path) == [(2, 1), (3, 1), (4, 2)]

        store.commit(2)
        assert visible(path) == [0, 1, 2, 3]
        assert staged(path) == [(4, 2)]


def test_finish_then_precommit_then_commit_of_the_final_checkpoint_makes_every_row_visible(tmp_path):
    path = tmp_path / "pages.db"
    with started(path, batch_rows=3) as (store, ctx):
        process(store, range(5))
        barrier(store, ctx, 1)
        process(store, range(5, 10))
        store.finish()
        store.precommit()
        assert visible(path) == []

        store.commit(2)

        assert visible(path) == list(range(10))


def test_a_repeated_or_older_commit_changes_nothing(tmp_path):
    path = tmp_path / "pages.db"
    with started(path) as (store, ctx):
        process(store, [0, 1])
        barrier(store, ctx, 1)
        store.commit(1)
        process(store, [2])
        barrier(store, ctx, 2)
        store.commit(2)
        process(store, [3])
        store.precommit()

        store.commit(2)
        store.commit(1)

        assert visible(path) == [0, 1, 2]
        assert staged(path) == [(3, 2)]
        assert select(path, "SELECT name, checkpoint FROM flowgraph_commits") == [("pages", 2)]


def test_the_commit_of_a_second_replica_on_the_same_file_is_a_no_op(tmp_path):
    path = tmp_path / "pages.db"
    with started(path, parallelism=2) as (first, first_ctx), \
            started(path, replica=1, parallelism=2) as (second, second_ctx):
        # Both tag their rows with the context of the thread, the second's: both are at checkpoint 0 here.
        process(first, [0, 1])
        process(second, [10, 11], replica=1)
        barrier(first, first_ctx, 1)
        barrier(second, second_ctx, 1)

        first.commit(1)  # moves the rows of both replicas
        second.commit(1)

        assert sorted(visible(path)) == [0, 1, 10, 11]


def test_a_replica_that_staged_nothing_commits_the_rows_of_the_others(tmp_path):
    path = tmp_path / "pages.db"
    with started(path, parallelism=2) as (first, first_ctx), started(path, replica=1, parallelism=2) as (second, _):
        process(first, [0, 1])
        barrier(first, first_ctx, 1)

        second.commit(1)

    assert visible(path) == [0, 1]


def test_replicas_committing_at_once_make_each_row_visible_once(tmp_path):
    path = tmp_path / "pages.db"
    with started(path, batch_rows=7) as (store, ctx):
        process(store, range(1000))
        barrier(store, ctx, 1)
    stores = []
    for replica in range(4):
        with replica_context("store", replica=replica, parallelism=4, checkpointing=True):
            replica_store = SQLiteStore(path, "pages")
            replica_store.setup()
            stores.append(replica_store)
    all_ready = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def commit(replica_store: SQLiteStore) -> None:
        try:
            all_ready.wait(timeout=10)
            replica_store.commit(1)
        except BaseException as error:  # shown by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=commit, args=(replica_store,)) for replica_store in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        for replica_store in stores:
            replica_store.teardown()

    assert errors == []
    assert not any(thread.is_alive() for thread in threads)
    assert visible(path) == list(range(1000))


def _run_without_a_crash(path: Path) -> list[int]:
    with started(path, batch_rows=2) as (store, ctx):
        process(store, range(4))
        barrier(store, ctx, 1)
        store.commit(1)
        process(store, range(4, 8))
        barrier(store, ctx, 2)
        store.commit(2)
        process(store, range(8, 10))
        store.finish()
        store.precommit()
        store.commit(3)
    return visible(path)


@pytest.mark.parametrize("committed_before_the_crash", [True, False])
def test_a_replica_restarted_from_a_checkpoint_stores_the_rows_of_a_run_without_the_crash(
    tmp_path, committed_before_the_crash
):
    expected = _run_without_a_crash(tmp_path / "reference.db")
    path = tmp_path / "pages.db"
    with started(path, batch_rows=2) as (store, ctx):
        process(store, range(4))
        barrier(store, ctx, 1)
        if committed_before_the_crash:
            store.commit(1)
        process(store, range(4, 7))  # 4 and 5 are written to the staging table, 6 is only buffered
        assert staged(path)[-2:] == [(4, 1), (5, 1)]
        # the replica dies here: no precommit, its buffer is lost

    with started(path, checkpoint=1, incarnation=1, batch_rows=2) as (store, ctx):
        assert staged(path) == []
        assert visible(path) == [0, 1, 2, 3]
        process(store, range(4, 8))  # written again from the checkpoint on
        barrier(store, ctx, 2)
        store.commit(2)
        process(store, range(8, 10))
        store.finish()
        store.precommit()
        store.commit(3)

    assert expected == list(range(10))
    assert visible(path) == expected


def test_a_commit_reissued_after_the_restore_of_its_own_checkpoint_does_not_repeat_rows(tmp_path):
    path = tmp_path / "pages.db"
    with started(path) as (store, ctx):
        process(store, range(3))
        barrier(store, ctx, 1)
        store.commit(1)

    with started(path, checkpoint=1, incarnation=1):  # rollback(1), then commit(1) again
        pass
    with started(path, checkpoint=1):  # and once more, on --resume
        pass

    assert visible(path) == [0, 1, 2]


def test_rollback_to_zero_discards_every_staged_row(tmp_path):
    path = tmp_path / "pages.db"
    with started(path, batch_rows=1) as (store, ctx):
        process(store, [0, 1])
        barrier(store, ctx, 1)
        process(store, [2])
        process(store, [3], replica=1)

    with started(path, incarnation=1) as (store, _):
        assert staged(path) == []
        assert visible(path) == []


def test_rollback_discards_the_staged_rows_of_every_replica_after_its_checkpoint(tmp_path):
    path = tmp_path / "pages.db"
    with started(path, parallelism=2, batch_rows=1) as (store, ctx):
        process(store, [0])
        ctx.checkpoint = 1
        process(store, [1])
        process(store, [11], replica=1)
        ctx.checkpoint = 2
        process(store, [2])

    with started(path, checkpoint=1, replica=1, parallelism=2, incarnation=1):
        pass

    assert visible(path) == [0]
    assert staged(path) == []


def test_a_fresh_run_commits_its_rows_after_an_earlier_run_on_the_same_table(tmp_path):
    path = tmp_path / "pages.db"
    with started(path) as (store, ctx):
        process(store, [0])
        for checkpoint in range(1, 6):
            barrier(store, ctx, checkpoint)
            store.commit(checkpoint)

    with started(path) as (store, ctx):  # checkpoint ids start again at 1
        process(store, [1])
        barrier(store, ctx, 1)
        store.commit(1)

    assert visible(path) == [0, 1]


def test_flush_writes_to_the_staging_table_and_keeps_rows_invisible(tmp_path):
    path = tmp_path / "pages.db"
    with started(path) as (store, _):
        process(store, [0, 1])
        store.flush()

        assert staged(path) == [(0, 0), (1, 0)]
        assert count_rows(path, "pages") == 0


def test_replace_drops_the_table_its_staged_rows_and_its_commit_record_on_a_fresh_start(tmp_path):
    path = tmp_path / "pages.db"
    with started(path, batch_rows=1) as (store, ctx):
        process(store, [0])
        barrier(store, ctx, 3)
        store.commit(3)
        process(store, [1])

    with started(path, replace=True) as (store, ctx):
        assert tables(path) == ["flowgraph_commits"]
        assert select(path, "SELECT * FROM flowgraph_commits") == []
        process(store, [2])
        barrier(store, ctx, 1)
        store.commit(1)

    assert visible(path) == [2]


def test_replace_with_a_schema_creates_the_dropped_table_again(tmp_path):
    path = tmp_path / "pages.db"
    schema = {"replica": "INTEGER", "n": "INTEGER NOT NULL"}
    with started(path, schema=schema) as (store, ctx):
        process(store, [0])
        barrier(store, ctx, 1)
        store.commit(1)

    with started(path, schema=schema, replace=True):
        assert count_rows(path, "pages") == 0
        assert select(path, "SELECT name, type FROM pragma_table_info('pages__staged')") == [
            ("replica", "INTEGER"), ("n", "INTEGER"), ("_checkpoint", "INTEGER"),
        ]


@pytest.mark.parametrize(
    ("checkpoint", "incarnation"), [(2, 0), (0, 1), (2, 1)], ids=["resume", "restart-before-a-checkpoint", "restart"]
)
def test_replace_keeps_the_rows_committed_so_far_when_the_replica_does_not_start_fresh(
    tmp_path, checkpoint, incarnation
):
    path = tmp_path / "pages.db"
    with started(path, replace=True) as (store, ctx):
        process(store, [0])
        barrier(store, ctx, 1)
        store.commit(1)
        process(store, [1])
        barrier(store, ctx, 2)

    with started(path, checkpoint=checkpoint, incarnation=incarnation, replace=True) as (store, ctx):
        process(store, [2])
        barrier(store, ctx, checkpoint + 1)
        store.commit(checkpoint + 1)

    expected = [0, 1, 2] if checkpoint == 2 else [0, 2]
    assert visible(path) == expected


def test_the_staged_table_has_the_columns_and_types_of_the_table_made_from_the_first_row(tmp_path):
    path = tmp_path / "pages.db"
    with started(path) as (store, _):
        store.process({"url": "u", "status": 200, "score": 0.5, "note": None})

    assert select(path, "SELECT name, type FROM pragma_table_info('pages__staged')") == [
        ("url", "TEXT"), ("status", "INTEGER"), ("score", "REAL"), ("note", ""), ("_checkpoint", "INTEGER"),
    ]


def test_the_staged_table_takes_the_columns_of_an_existing_table(tmp_path):
    path = tmp_path / "pages.db"
    connection = sqlite3.connect(path)
    connection.execute('CREATE TABLE pages (n INTEGER, replica INTEGER, "when" TEXT)')
    connection.close()

    with started(path) as (store, ctx):
        process(store, [7])
        barrier(store, ctx, 1)
        store.commit(1)

    assert select(path, "SELECT name, type FROM pragma_table_info('pages__staged')") == [
        ("n", "INTEGER"), ("replica", "INTEGER"), ("when", "TEXT"), ("_checkpoint", "INTEGER"),
    ]
    assert select(path, 'SELECT n, replica, "when" FROM pages') == [(7, 0, None)]


def test_a_row_breaking_a_constraint_of_the_table_fails_the_commit_and_stays_staged(tmp_path):
    path = tmp_path / "pages.db"
    with started(path, schema={"n": "INTEGER PRIMARY KEY", "replica": "INTEGER"}) as (store, ctx):
        process(store, [0, 1, 1])
        barrier(store, ctx, 1)

        with pytest.raises(sqlite3.IntegrityError):
            store.commit(1)

    assert count_rows(path, "pages") == 0
    assert staged(path) == [(0, 0), (1, 0), (1, 0)]
    assert select(path, "SELECT * FROM flowgraph_commits") == []


def test_a_row_key_named_like_the_checkpoint_column_is_rejected(tmp_path):
    path = tmp_path / "pages.db"
    expected = (
        f"table 'pages' in {path} has a column '_checkpoint', which SQLiteStore needs for its staging table "
        "'pages__staged' in a run with checkpoints; rename that key upstream, or leave it out with columns="
    )
    with started(path) as (store, _), pytest.raises(ValueError, match=re.escape(expected)):
        store.process({"n": 1, "_checkpoint": 3})


def test_without_checkpoints_rows_are_visible_after_finish_and_nothing_is_staged(tmp_path):
    path = tmp_path / "pages.db"
    with replica_context("store"):
        store = SQLiteStore(path, "pages", batch_rows=2)
        store.setup()
        try:
            process(store, range(3))
            assert visible(path) == [0, 1]
            store.precommit()
            store.commit(1)
            store.rollback(0)
            assert visible(path) == [0, 1, 2]
        finally:
            store.teardown()

    assert tables(path) == ["pages"]


def test_without_a_running_node_the_store_does_not_stage(tmp_path):
    path = tmp_path / "pages.db"

    drive_sink(SQLiteStore(path, "pages"), [{"n": 0}, {"n": 1}])

    assert visible(path) == [0, 1]
    assert tables(path) == ["pages"]
