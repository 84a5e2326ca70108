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

from flowgraph import context

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
"""How long a write waits for another connection's write to the same file to end."""


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
    - ``replace``: drop the table at ``setup()``, so each run starts from an
      empty table (else rows are added to what earlier runs stored). Only for
      a store at parallelism 1: replicas would drop each other's rows.

    Several replicas, or several sinks, may write to one file: the database
    is put in WAL mode and a write waits up to ``BUSY_TIMEOUT_S`` for another
    one to finish.

    With ``--restarts`` it is restarted like a function (``restartable``:
    its state is the connection, which ``setup()`` opens again) and writes
    its buffer whenever the runtime is about to acknowledge its rows
    (``flush()``), so no acknowledged row is lost: rows arrive at least once.
    A restarted replica does not drop the table again (``replace=True``).

    >>> from flowgraph import Topology
    >>> topo = Topology("store")
    >>> @topo.source
    ... def rows():
    ...     yield {"url": "http://valley.test/", "words": 120}
    >>> store = topo.sink(SQLiteStore("out/pages.db", "pages"), inputs=rows, parallelism=2, name="store")
    """

    restartable = True
    """Its ``setup()`` rebuilds all it needs: a restart loses nothing written (see ``flush``)."""

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
        self._table_columns: list[str] = []
        self._buffer: list[tuple[Any, ...]] = []

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
        # isolation_level=None: transactions are begun explicitly, with BEGIN
        # IMMEDIATE, so that a writer waits for the lock at the start instead
        # of failing with "database is locked" when it upgrades a read lock.
        # One replica uses the connection from one thread at a time, but
        # teardown may come from another thread than setup.
        self._connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        _use_wal(self._connection)
        if self.replace and context().incarnation == 0:
            replicas = context().parallelism
            if replicas > 1:
                raise ValueError(
                    f"SQLiteStore for table {self.table!r} has replace=True at parallelism {replicas}: "
                    "each replica would drop the rows of the others; use parallelism=1 or replace=False"
                )
            self._connection.execute(f"DROP TABLE IF EXISTS {_quote(self.table)}")
        if self.schema is not None:
            self._create_table(self.schema)

    def process(self, row: dict[str, Any]) -> None:
        """Buffer one row; write the buffer when it holds ``batch_rows`` rows."""
        if not isinstance(row, dict):
            raise TypeError(
                f"SQLiteStore for table {self.table!r} takes dict rows, not {type(row).__name__}: {row!r:.200}"
            )
        if self._connection is None:
            raise RuntimeError("SQLiteStore.process() was called before setup()")
        if not self._table_columns:
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
        self._buffer.append(tuple(_sql_value(self.table, key, row.get(key)) for key in self._table_columns))
        if len(self._buffer) >= self.batch_rows:
            self._write_buffer()

    def flush(self) -> None:
        """Write the rows buffered so far (the runtime calls it before it acknowledges them, with restarts)."""
        self._write_buffer()

    def finish(self) -> None:
        """Write the rows still buffered."""
        self._write_buffer()

    def teardown(self) -> None:
        """Close the database; rows not written by then are dropped with a warning."""
        if self._buffer:
            logger.warning(
                "dropping %d rows for table %r in %s that were not written before the run stopped",
                len(self._buffer),
                self.table,
                self.path,
            )
            self._buffer = []
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _create_table(self, column_types: Mapping[str, str]) -> None:
        assert self._connection is not None
        definitions = ", ".join(f"{_quote(column)} {sql_type}".rstrip() for column, sql_type in column_types.items())
        self._connection.execute(f"CREATE TABLE IF NOT EXISTS {_quote(self.table)} ({definitions})")
        self._table_columns = [
            info[1] for info in self._connection.execute(f"PRAGMA table_info({_quote(self.table)})")
        ]

    def _write_buffer(self) -> None:
        if not self._buffer:
            return
        assert self._connection is not None
        placeholders = ", ".join("?" for _ in self._table_columns)
        names = ", ".join(_quote(column) for column in self._table_columns)
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            self._connection.executemany(
                f"INSERT INTO {_quote(self.table)} ({names}) VALUES ({placeholders})", self._buffer
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
