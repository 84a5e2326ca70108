"""``SQLiteStore``: a sink that writes dict rows into an SQLite table, and ``count_rows``."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flowgraph import FlowgraphError, context

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
"""How long a write waits for another connection's write to the same file to end."""

STAGED_SUFFIX = "__staged"
"""With checkpoints, rows of ``table`` wait in ``table + STAGED_SUFFIX`` until their checkpoint is complete."""

CHECKPOINT_COLUMN = "_checkpoint"
"""The column of a staging table holding the checkpoint a row was written after."""

COMMITS_TABLE = "flowgraph_commits"
"""The table (``name TEXT PRIMARY KEY, checkpoint INTEGER``) recording up to which checkpoint each table is visible."""


class SQLiteStore:
    """A sink that inserts each dict item as a row of ``table`` in the SQLite file ``path``.

    Rows are buffered and written ``batch_rows`` at a time, one transaction
    per batch; ``finish()`` writes the rest. Rows still buffered when the run
    fails before ``finish()`` are not written (a warning says how many).

    The table is created if it does not exist: with ``schema`` (a mapping
    column -> SQL type, used verbatim, e.g. ``{"url": "TEXT PRIMARY KEY"}``),
    or else from the keys of the first row, typed by its values: int and
    bool -> INTEGER, float -> REAL, str -> TEXT, bytes -> BLOB, list, dict
    and anything else -> TEXT holding JSON, None -> no type (SQLite then
    keeps each value as it comes; a TEXT column would turn a later 200 into
    '200'). If the table exists, its columns are used as they are.

    Values are stored as they are, except that list, dict and other values
    that SQLite cannot hold are stored as JSON text; None is NULL. A row key
    that is not a column raises ``ValueError``; a column missing from a row is
    stored as NULL.

    Arguments:

    - ``path``: the database file, resolved against the current directory of
      the replica at ``setup()``; parent directories are created, and
      ``self.path`` is the absolute path (a str) afterwards. With
      ``path=None`` the path is the run parameter ``db``
      (``flowgraph run ... --set db=crawl.db``).
    - ``columns``: store only these keys of each row, in this order, and
      ignore the others; ``None`` stores every key.
    - ``replace``: drop the table at ``setup()`` of a fresh start (not a
      restart, not a resume: see below), so each run starts from an empty table
      (else rows are added to what earlier runs stored). Only for a store at
      parallelism 1: replicas would drop each other's rows.

    Several replicas, or several sinks, may write to one file: the database
    is put in WAL mode and a write waits up to ``BUSY_TIMEOUT_S`` for another
    one to finish.

    With ``--restarts`` it is restarted like a function (``restartable``:
    its state is the connection, which ``setup()`` opens again) and writes
    its buffer whenever the runtime is about to acknowledge its rows
    (``flush()``), so no acknowledged row is lost: rows arrive at least once.
    A restarted replica does not drop the table again (``replace=True``).

    With ``--checkpoint`` (``context().checkpointing``) its rows are in
    ``table`` **exactly once**, by a two-phase commit (as Flink's
    two-phase-commit sinks; the checkpoint id plays the part of Spark's batch
    id). Rows are written, in batches as above, to the staging table
    ``<table>__staged``: the columns of ``table`` with their declared types,
    plus ``_checkpoint INTEGER``, the ``context().checkpoint`` of the replica
    when the row came to ``process()`` (the last barrier it had passed).
    ``count_rows`` and every other reader of ``table`` see only the rows of
    complete checkpoints; the table ``flowgraph_commits(name TEXT PRIMARY
    KEY, checkpoint INTEGER)`` records, for each table, the checkpoint up to
    which its rows were made visible. The runtime calls these hooks (a sink
    of one's own gets exactly-once with the same three):

    - ``precommit()``: at every checkpoint barrier the replica passes (before
      ``context().checkpoint`` becomes the barrier's id), and once after
      ``finish()`` at its end, before its part of the checkpoint is stored.
      Everything written since the last call is made durable (a committed
      SQLite transaction) but not visible.
    - ``commit(n)``: the launcher declared checkpoint ``n`` complete. In one
      transaction, unless ``flowgraph_commits`` says ``table`` was committed
      up to ``n`` or later: the staged rows from before barrier ``n`` (of every
      replica, ``_checkpoint < n``) move into ``table``, in the order they were
      written, and the record becomes ``n``. Idempotent: it is re-issued
      after a restore and comes from every replica of the sink; the first
      moves the rows, the others change nothing. The final checkpoint's
      comes after ``finish()`` and before ``teardown()``.
    - ``rollback(n)``: the replica starts from checkpoint ``n`` (after a
      failure, or on ``--resume``; 0: from the beginning). Called after
      ``setup()``, before ``commit(n)`` is re-issued (when ``n > 0``) and
      before any item; every replica of the sink does it before any of them
      gets an item. The staged rows written after barrier ``n``
      (``_checkpoint >= n``, of every replica) are deleted: they will be
      written again. ``rollback(0)`` deletes every staged row, and the
      commit record of ``table`` too (checkpoint ids start again at 1 in a new
      run), so a fresh run never keeps uncommitted rows of a killed run it
      did not resume.

    Without checkpoints the three hooks do nothing. With checkpoints:

    - ``replace=True`` drops ``table``, its staging table and its commit
      record at ``setup()`` of a fresh start only (incarnation 0, not
      restored from a checkpoint): a ``--resume`` or a restart keeps the
      rows committed so far.
    - The staging table has the types of ``table`` but none of its
      constraints (PRIMARY KEY, UNIQUE, NOT NULL, CHECK): they are checked
      when ``commit()`` moves the rows. A row that breaks one makes the
      whole commit roll back and raise (the rows stay staged), the run fails,
      and a ``--resume`` fails the same way until that row is deleted from
      ``<table>__staged``.
    - Use one sink per table: the rollback of one sink would delete what
      another staged for the same table.
    - ``flush()`` writes to the staging table too: flushed rows stay invisible
      until their checkpoint is committed.

    >>> from flowgraph import Topology
    >>> topo = Topology("store")
    >>> @topo.source
    ... def rows():
    ...     yield {"url": "http://valley.test/", "words": 120}
    >>> store = topo.sink(SQLiteStore("out/pages.db", "pages"), inputs=rows, parallelism=2, name="store")
    """

    restartable = True
    """Its ``setup()`` rebuilds all it needs: a restart loses nothing written (see ``flush``).

    So it is never part of a checkpoint's state; with checkpoints the
    runtime still calls its ``precommit``, ``commit`` and ``rollback`` hooks.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        table: str,
        schema: Mapping[str, str] | None = None,
        batch_rows: int = 500,
        columns: Sequence[str] | None = None,
        replace: bool = False,
    ) -> None:
        if not isinstance(table, str) or not table:
            raise ValueError(f"SQLiteStore needs a table name, got {table!r}")
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise ValueError(f"SQLiteStore needs an integer batch_rows >= 1, got {batch_rows!r}")
        if schema is not None and not schema:
            raise ValueError(f"SQLiteStore got an empty schema for table {table!r}; pass None to use the first row")
        if columns is not None and schema is not None:
            missing = [column for column in columns if column not in schema]
            if missing:
                raise ValueError(
                    f"SQLiteStore columns {missing} of table {table!r} are not in schema "
                    f"(schema: {', '.join(schema)}); add them to schema= or drop them from columns="
                )
        self.path = None if path is None else os.fspath(path)
        self.table = table
        self.schema = None if schema is None else dict(schema)
        self.batch_rows = batch_rows
        self.columns = None if columns is None else list(columns)
        self.replace = replace
        self._connection: sqlite3.Connection | None = None
        self._checkpointing = False
        """Set at ``setup()``: the run has checkpoints, so rows are staged (``context().checkpointing``)."""
        self._table_columns: list[str] = []
        self._buffer: list[tuple[Any, ...]] = []
        """Rows not yet written; with checkpoints each ends with its ``_checkpoint``."""

    @property
    def staged_table(self) -> str:
        """The name of the staging table used with checkpoints: ``table`` + ``"__staged"``."""
        return self.table + STAGED_SUFFIX

    def setup(self) -> None:
        """Open the database, and create the table if ``schema`` is given.

        Raises ``FlowgraphError`` when ``path`` is None and this does not run
        inside a node, ``ValueError`` when the run has no ``db`` parameter.
        """
        path = self.path if self.path is not None else context().params.get("db")
        if not path:
            raise ValueError(
                f"SQLiteStore for table {self.table!r} was given path=None and the run has no "
                "'db' parameter; pass a path, or run with --set db=FILE"
            )
        self.path = os.path.abspath(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._checkpointing = _in_checkpointed_run()
        self._connection = _connect(self.path)
        _use_wal(self._connection)
        if self._checkpointing:
            self._connection.execute(
                f"CREATE TABLE IF NOT EXISTS {_quote(COMMITS_TABLE)} (name TEXT PRIMARY KEY, checkpoint INTEGER)"
            )
        me = context() if self.replace else None
        if me is not None and me.incarnation == 0:
            if me.parallelism > 1:
                raise ValueError(
                    f"SQLiteStore for table {self.table!r} has replace=True at parallelism {me.parallelism}: "
                    "each replica would drop the rows of the others; use parallelism=1 or replace=False"
                )
            if me.checkpoint == 0:
                self._drop_tables(self._connection)
        if self.schema is not None:
            self._create_table(self.schema)

    def process(self, row: dict[str, Any]) -> None:
        """Buffer one row; write the buffer when it holds ``batch_rows`` rows.

        With checkpoints the row is tagged now with ``context().checkpoint``:
        the buffer may hold rows from both sides of a barrier.
        """
        if not isinstance(row, dict):
            raise TypeError(
                f"SQLiteStore for table {self.table!r} takes dict rows, not {type(row).__name__}: {row!r:.200}"
            )
        if self._connection is None:
            raise RuntimeError("SQLiteStore.process() was called before setup()")
        if not self._table_columns:
            if self.schema is not None:
                self._create_table(self.schema)
            else:
                keys = self.columns if self.columns is not None else list(row)
                self._create_table({key: _sql_type(row.get(key)) for key in keys})
        if self.columns is not None:
            row = {key: row[key] for key in self.columns if key in row}
        unknown = [key for key in row if key not in self._table_columns]
        if unknown:
            what = "column" if len(unknown) == 1 else "columns"
            raise ValueError(
                f"table {self.table!r} in {self.path} has no {what} "
                f"{', '.join(repr(key) for key in unknown)} (columns: {', '.join(self._table_columns)}); "
                "add it to schema=, pick the keys to store with columns=, or drop it upstream"
            )
        values = tuple(_sql_value(self.table, key, row.get(key)) for key in self._table_columns)
        if self._checkpointing:
            values += (context().checkpoint,)
        self._buffer.append(values)
        if len(self._buffer) >= self.batch_rows:
            self._write_buffer()

    def flush(self) -> None:
        """Write the rows buffered so far (the runtime calls it before it acknowledges them, with restarts).

        With checkpoints they go to the staging table: still invisible.
        """
        self._write_buffer()

    def finish(self) -> None:
        """Write the rows still buffered (with checkpoints: staged, visible after ``commit``)."""
        self._write_buffer()

    def precommit(self) -> None:
        """Make every row given so far durable but not visible: write the buffer to the staging table.

        The runtime calls it at each checkpoint barrier and after ``finish()``.
        """
        if self._connection is None:
            raise RuntimeError("SQLiteStore.precommit() was called before setup()")
        self._write_buffer()

    def commit(self, checkpoint: int) -> None:
        """Checkpoint ``checkpoint`` is complete: move the rows staged before its barrier into the table.

        Once per table and checkpoint, whichever replica comes first; a
        repeated or older ``checkpoint`` changes nothing. Nothing without
        checkpoints. The runtime calls it before ``teardown()``, the final
        checkpoint's too.
        """
        if not self._checkpointing:
            return
        self._commit(self._open("commit"), checkpoint)

    def _commit(self, connection: sqlite3.Connection, checkpoint: int) -> None:
        table, staged, tag = _quote(self.table), _quote(self.staged_table), _quote(CHECKPOINT_COLUMN)
        moved = 0
        connection.execute("BEGIN IMMEDIATE")  # replicas of the sink commit one after the other
        try:
            found = connection.execute(
                f"SELECT checkpoint FROM {_quote(COMMITS_TABLE)} WHERE name = ?", (self.table,)
            ).fetchone()
            if found is not None and found[0] >= checkpoint:
                connection.execute("COMMIT")
                return
            if _has_table(connection, self.staged_table):
                names = ", ".join(_quote(column) for column in _columns(connection, self.table))
                moved = connection.execute(
                    f"INSERT INTO {table} ({names}) SELECT {names} FROM {staged} WHERE {tag} < ? ORDER BY rowid",
                    (checkpoint,),
                ).rowcount
                connection.execute(f"DELETE FROM {staged} WHERE {tag} < ?", (checkpoint,))
            connection.execute(
                f"INSERT OR REPLACE INTO {_quote(COMMITS_TABLE)} (name, checkpoint) VALUES (?, ?)",
                (self.table, checkpoint),
            )
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        logger.debug("checkpoint %d: %d rows made visible in table %r of %s", checkpoint, moved, self.table, self.path)

    def rollback(self, checkpoint: int) -> None:
        """The replica starts from checkpoint ``checkpoint`` (0: the beginning): drop what was staged after it.

        Deletes the staged rows of every replica written after that barrier,
        and the rows still buffered; ``rollback(0)`` also forgets up to which
        checkpoint the table was committed. Nothing without checkpoints.
        """
        if not self._checkpointing:
            return
        connection = self._open("rollback")
        self._buffer = []
        connection.execute("BEGIN IMMEDIATE")
        try:
            if _has_table(connection, self.staged_table):
                connection.execute(
                    f"DELETE FROM {_quote(self.staged_table)} WHERE {_quote(CHECKPOINT_COLUMN)} >= ?", (checkpoint,)
                )
            if checkpoint == 0:
                connection.execute(f"DELETE FROM {_quote(COMMITS_TABLE)} WHERE name = ?", (self.table,))
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def teardown(self) -> None:
        """Close the database; rows not written by then are dropped with a warning.

        With checkpoints nothing is lost: those rows came after the last
        ``precommit()``, and a run resumed from its last checkpoint writes
        them again.
        """
        if self._buffer:
            logger.log(
                logging.INFO if self._checkpointing else logging.WARNING,
                "dropping %d rows for table %r in %s that were not written before the run stopped",
                len(self._buffer),
                self.table,
                self.path,
            )
            self._buffer = []
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _open(self, hook: str) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError(f"SQLiteStore.{hook}() was called before setup()")
        return self._connection

    def _drop_tables(self, connection: sqlite3.Connection) -> None:
        """``replace=True`` on a fresh start: drop the table (with checkpoints: its staging table and record too)."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute(f"DROP TABLE IF EXISTS {_quote(self.table)}")
            if self._checkpointing:
                connection.execute(f"DROP TABLE IF EXISTS {_quote(self.staged_table)}")
                connection.execute(f"DELETE FROM {_quote(COMMITS_TABLE)} WHERE name = ?", (self.table,))
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _create_table(self, column_types: Mapping[str, str]) -> None:
        assert self._connection is not None
        if self._checkpointing and CHECKPOINT_COLUMN in column_types:
            raise self._reserved_column()
        definitions = ", ".join(f"{_quote(column)} {sql_type}".rstrip() for column, sql_type in column_types.items())
        self._connection.execute(f"CREATE TABLE IF NOT EXISTS {_quote(self.table)} ({definitions})")
        self._table_columns = _columns(self._connection, self.table)
        if self._checkpointing:
            self._create_staged_table()

    def _create_staged_table(self) -> None:
        """The staging table: the columns of the table as it is in the file, with their declared types, and
        ``_checkpoint`` (types, so values are converted as the table would; no constraints, see the class)."""
        assert self._connection is not None
        if CHECKPOINT_COLUMN in self._table_columns:
            raise self._reserved_column()
        declared = [(info[1], info[2]) for info in self._connection.execute(f"PRAGMA table_info({_quote(self.table)})")]
        definitions = ", ".join(f"{_quote(column)} {sql_type}".rstrip() for column, sql_type in declared)
        self._connection.execute(
            f"CREATE TABLE IF NOT EXISTS {_quote(self.staged_table)} "
            f"({definitions}, {_quote(CHECKPOINT_COLUMN)} INTEGER)"
        )
        expected = [*self._table_columns, CHECKPOINT_COLUMN]
        found = _columns(self._connection, self.staged_table)
        if found != expected:
            raise ValueError(
                f"staging table {self.staged_table!r} in {self.path} has columns {', '.join(found)}, not those of "
                f"table {self.table!r} and {CHECKPOINT_COLUMN} ({', '.join(expected)}); an earlier run left it with "
                f"other columns: drop it (its rows were never committed), or use replace=True"
            )

    def _reserved_column(self) -> ValueError:
        return ValueError(
            f"table {self.table!r} in {self.path} has a column {CHECKPOINT_COLUMN!r}, which SQLiteStore needs for "
            f"its staging table {self.staged_table!r} in a run with checkpoints; rename that key upstream, or "
            "leave it out with columns="
        )

    def _write_buffer(self) -> None:
        if not self._buffer:
            return
        assert self._connection is not None
        target, columns = self.table, self._table_columns
        if self._checkpointing:
            target, columns = self.staged_table, [*self._table_columns, CHECKPOINT_COLUMN]
        placeholders = ", ".join("?" for _ in columns)
        names = ", ".join(_quote(column) for column in columns)
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            self._connection.executemany(
                f"INSERT INTO {_quote(target)} ({names}) VALUES ({placeholders})", self._buffer
            )
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")
        self._buffer = []


def count_rows(path: str | os.PathLike[str], table: str) -> int:
    """The number of rows in ``table`` of the SQLite file ``path``.

    Raises ``FileNotFoundError`` if there is no such file and
    ``sqlite3.OperationalError`` if it has no such table.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no SQLite database at {os.fspath(path)!r}")
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    try:
        (count,) = connection.execute(f"SELECT COUNT(*) FROM {_quote(table)}").fetchone()
    finally:
        connection.close()
    return int(count)


def _in_checkpointed_run() -> bool:
    """``context().checkpointing``; False outside a running node (a store driven by hand, as in tests)."""
    try:
        return context().checkpointing
    except FlowgraphError:
        return False


def _has_table(connection: sqlite3.Connection, table: str) -> bool:
    found = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    return found is not None


def _columns(connection: sqlite3.Connection, table: str) -> list[str]:
    """The column names of ``table`` in order (none if there is no such table)."""
    return [info[1] for info in connection.execute(f"PRAGMA table_info({_quote(table)})")]


def _connect(path: str) -> sqlite3.Connection:
    """A connection to ``path`` for one replica, waiting up to ``BUSY_TIMEOUT_S`` for other writers."""
    # isolation_level=None: transactions are begun explicitly, with BEGIN
    # IMMEDIATE, so that a writer waits for the lock at the start instead
    # of failing with "database is locked" when it upgrades a read lock.
    # One replica uses the connection from one thread at a time, but
    # teardown may come from another thread than setup.
    return sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)


def _use_wal(connection: sqlite3.Connection) -> None:
    """Put the database in WAL mode, waiting up to ``BUSY_TIMEOUT_S`` for other connections.

    When several processes open a new file at once, the switch to WAL can
    fail with "database is locked" at once, without SQLite's busy timeout,
    while another process is making the same switch; so poll with a deadline.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "database is locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def _quote(name: str) -> str:
    """``name`` as an SQL identifier, whatever characters it holds."""
    return '"' + name.replace('"', '""') + '"'


def _sql_type(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, int)):
        return "INTEGER"
    if isinstance(value, float):
        return "REAL"
    if isinstance(value, bytes):
        return "BLOB"
    return "TEXT"


def _sql_value(table: str, column: str, value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bytes)):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"column {column!r} of table {table!r} got a {type(value).__name__} that is not "
            f"JSON-serializable: {value!r:.200}; convert it to str, int, float, bytes, list or dict"
        ) from exc
