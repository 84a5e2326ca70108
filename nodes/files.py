"""Files in and out: the sources ``ReadLines``, ``ReadJsonLines``, ``ReadFiles`` and the sink ``WriteJsonLines``.

The sources take a path, a glob pattern or a list of them. Each replica
lists the files at ``setup()`` on its own host, relative to its own current
directory (``~`` is expanded), sorts them and reads its share: replica ``r``
of ``n`` reads files ``r``, ``r + n``, ``r + 2n``... of the sorted list. A
single file therefore goes to replica 0 only; to read one big file in
parallel, split it first. A file matched by several patterns is read once.

Patterns follow ``glob``: ``*`` and ``?`` stay within a directory, ``**``
crosses directories (``"logs/**/*.log"``), and as in the shell ``*`` does
not match names that start with a dot. A pattern that matches no file, or a
path that does not exist, fails ``setup()`` with ``FileNotFoundError``.
"""

from __future__ import annotations

import codecs
import fcntl
import glob
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from flowgraph import context

logger = logging.getLogger(__name__)

FLUSH_LINES = 1000
"""``WriteJsonLines`` writes its buffered lines once it holds this many."""

Paths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
"""What the file sources take: a path or glob pattern, or a list of them."""

_READ_MODES = ("bytes", "text", "path")
_GLOB_CHARACTERS = frozenset("*?[")


class ReadLines:
    """A source that yields every line of its files as a ``str``.

    Arguments:

    - ``paths``: a path, a glob pattern or a list of them; see the module
      docstring for how files are listed and shared between replicas (a
      single file goes to replica 0 only). A directory is an error: give a
      pattern such as ``"books/*.txt"``.
    - ``encoding``: the files' text encoding. ``\\n``, ``\\r\\n`` and ``\\r``
      all end a line, as with ``open()``.
    - ``strip_newline``: leave the ``"\\n"`` off the end of each line.
    - ``skip_blank``: leave out lines that hold only whitespace.

    Files are read in sorted order, each from its first line to its last.
    ``setup()`` raises ``FileNotFoundError`` for a pattern that matches no
    file; a file that is not valid in ``encoding`` raises ``ValueError``
    naming the file and line.

    >>> import pathlib, tempfile
    >>> from flowgraph import Topology
    >>> from flowgraph.testing import run_and_collect
    >>> book = pathlib.Path(tempfile.mkdtemp(), "book.txt")
    >>> _ = book.write_text("Call me Ishmael.\\n\\nSome years ago\\n")
    >>> topo = Topology("read")
    >>> lines = topo.source(ReadLines(book, skip_blank=True), name="lines")
    >>> @topo.sink(inputs=lines)
    ... def show(line):
    ...     pass
    >>> run_and_collect(topo, mode="inproc")["show"]
    ['Call me Ishmael.', 'Some years ago']
    """

    def __init__(
        self, paths: Paths, *, encoding: str = "utf-8", strip_newline: bool = True, skip_blank: bool = False
    ) -> None:
        self.paths = _path_list("ReadLines", paths)
        self.encoding = _checked_encoding("ReadLines", encoding)
        self.strip_newline = strip_newline
        self.skip_blank = skip_blank
        self._files: list[str] = []

    def setup(self) -> None:
        """List the files and pick this replica's share; ``FileNotFoundError`` if a pattern matches none."""
        self._files = _files_of_this_replica("ReadLines", self.paths, expand_directories=False)

    def generate(self) -> Iterator[str]:
        """Yield the lines of this replica's files, file after file."""
        for path in self._files:
            for line in _lines(path, self.encoding):
                if self.strip_newline:
                    line = line.removesuffix("\n")
                if self.skip_blank and not line.strip():
                    continue
                yield line


class ReadJsonLines:
    """A source that yields the parsed JSON value of every non-blank line of its files.

    ``paths`` and ``encoding`` are those of ``ReadLines``, and so is the way
    files are shared between replicas (a single file goes to replica 0
    only). Lines that hold only whitespace are skipped. A line that is not
    one JSON value raises ``ValueError`` naming the file and line number,
    which fails the run.

    >>> from flowgraph import Topology
    >>> topo = Topology("events")
    >>> events = topo.source(ReadJsonLines("events/*.jsonl"), name="events", parallelism=2)
    """

    def __init__(self, paths: Paths, *, encoding: str = "utf-8") -> None:
        self.paths = _path_list("ReadJsonLines", paths)
        self.encoding = _checked_encoding("ReadJsonLines", encoding)
        self._files: list[str] = []

    def setup(self) -> None:
        """List the files and pick this replica's share; ``FileNotFoundError`` if a pattern matches none."""
        self._files = _files_of_this_replica("ReadJsonLines", self.paths, expand_directories=False)

    def generate(self) -> Iterator[Any]:
        """Yield one parsed value per non-blank line of this replica's files."""
        for path in self._files:
            for number, line in enumerate(_lines(path, self.encoding), 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{path}, line {number}: not valid JSON ({exc.msg} at column {exc.colno}): "
                        f"{line.strip()!r:.200}; ReadJsonLines reads one JSON value per line"
                    ) from exc
                yield value


class ReadFiles:
    """A source that yields one dict per file: its path, name, size and (unless ``mode="path"``) content.

    Each item is ``{"path": str, "name": str, "size": int, "data": bytes | str}``:
    ``path`` is absolute, ``name`` the file name without its directory,
    ``size`` the size in bytes, and ``data`` the whole content.

    Arguments:

    - ``paths``: a path, a glob pattern or a list of them, as for
      ``ReadLines``, except that a directory (given or matched) stands for
      every regular file under it, recursively, hidden ones included.
      Files are sorted and shared between replicas as the module docstring
      says: replica ``r`` of ``n`` reads files ``r``, ``r + n``...
    - ``mode``: ``"bytes"`` (``data`` is the raw bytes), ``"text"``
      (decoded with ``encoding``, line endings turned into ``\\n`` as
      ``open()`` does) or ``"path"`` (no ``data`` key: open the file
      downstream, which suits big files since every item travels whole).

    >>> from flowgraph import Topology
    >>> topo = Topology("pages")
    >>> pages = topo.source(ReadFiles("site/", mode="text"), name="pages", parallelism=3)
    """

    def __init__(self, paths: Paths, *, mode: str = "bytes", encoding: str = "utf-8") -> None:
        if mode not in _READ_MODES:
            raise ValueError(f"ReadFiles mode must be 'bytes', 'text' or 'path', got {mode!r}")
        self.paths = _path_list("ReadFiles", paths)
        self.mode = mode
        self.encoding = _checked_encoding("ReadFiles", encoding)
        self._files: list[str] = []

    def setup(self) -> None:
        """List the files and pick this replica's share; ``FileNotFoundError`` if a pattern matches none."""
        self._files = _files_of_this_replica("ReadFiles", self.paths, expand_directories=True)

    def generate(self) -> Iterator[dict[str, Any]]:
        """Yield the dict described on the class for each of this replica's files."""
        for path in self._files:
            item: dict[str, Any] = {"path": path, "name": os.path.basename(path), "size": os.stat(path).st_size}
            if self.mode == "bytes":
                item["data"] = Path(path).read_bytes()
            elif self.mode == "text":
                try:
                    item["data"] = Path(path).read_text(encoding=self.encoding)
                except UnicodeDecodeError as exc:
                    raise _decode_error(path, self.encoding, exc, ", or read it with mode='bytes'") from exc
            yield item


class WriteJsonLines:
    """A sink that writes each item as one line of JSON.

    Lines are buffered and written ``FLUSH_LINES`` (1000) at a time, and the
    rest at ``finish()``. Lines still buffered when the run fails before
    ``finish()`` are not written (a warning says how many).

    Arguments:

    - ``path``: the file, resolved at ``setup()`` against the current
      directory of the replica (``~`` expanded); parent directories are
      created. ``self.path`` is this replica's absolute path afterwards.
      With ``path=None`` the path is the run parameter ``out``
      (``flowgraph run ... --set out=words.jsonl``).
    - ``per_replica=True``: each replica writes its own file, emptied at
      ``setup()``: ``{replica}`` in ``path`` is replaced by the replica's
      index, or else ``-0``, ``-1``... is put before the last suffix
      (``words.jsonl`` -> ``words-0.jsonl``), also at parallelism 1.
    - ``per_replica=False``: every replica appends to the one file ``path``,
      which is not emptied first (remove it before a run to start afresh).
      Each batch of lines is written with one ``os.write`` under an
      exclusive ``flock``, so lines of different replicas never interleave.
      Replicas on other hosts write to their own host's file system.

    Items are written with ``json.dumps(item, ensure_ascii=False)`` in
    UTF-8: tuples become lists, dict keys strings. An item that JSON cannot
    hold raises ``TypeError`` naming its type.

    With ``--restarts`` it is restarted (``restartable``) and writes its
    buffer before its lines are acknowledged (``flush()``), so lines arrive
    at least once; a restarted replica, or one resumed from a checkpoint,
    appends to its file instead of emptying it (with ``--checkpoint``, what
    it wrote after the last checkpoint is written again: at least once).

    >>> from flowgraph import Topology
    >>> topo = Topology("export")
    >>> @topo.source
    ... def rows():
    ...     yield {"word": "heron", "count": 3}
    >>> out = topo.sink(WriteJsonLines("out/words.jsonl"), inputs=rows, parallelism=2, name="out")
    """

    restartable = True
    """Its ``setup()`` opens the file again; a restart loses no line written (see ``flush``)."""

    def __init__(self, path: str | os.PathLike[str] | None, *, per_replica: bool = True) -> None:
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"WriteJsonLines takes a path (str or os.PathLike) or None, not {type(path).__name__}: {path!r:.200}"
            )
        self.path = None if path is None else os.fspath(path)
        if not per_replica and self.path is not None and "{replica}" in self.path:
            raise ValueError(
                f"WriteJsonLines path {self.path!r} holds {{replica}}, but per_replica=False writes one file "
                "for all replicas; drop {replica} from the path or set per_replica=True"
            )
        self.per_replica = per_replica
        self._fd: int | None = None
        self._lines: list[bytes] = []

    def setup(self) -> None:
        """Open this replica's file, creating parent directories.

        Raises ``ValueError`` when ``path`` is None and the run has no
        ``out`` parameter.
        """
        path = self.path if self.path is not None else context().params.get("out")
        if not path:
            raise ValueError(
                "WriteJsonLines was given path=None and the run has no 'out' parameter; "
                "pass a path, or run with --set out=FILE"
            )
        path = os.path.expanduser(path)
        if self.per_replica:
            path = _replica_path(path, context().replica)
        self.path = os.path.abspath(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        me = context()
        empty = self.per_replica and me.incarnation == 0 and me.checkpoint == 0  # restarted, resumed: it appends
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if empty else 0)
        self._fd = os.open(self.path, flags, 0o666)

    def process(self, item: Any) -> None:
        """Buffer ``item`` as a line of JSON; write the buffer when it holds ``FLUSH_LINES`` lines."""
        try:
            line = json.dumps(item, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"WriteJsonLines got a {type(item).__name__} item that is not JSON-serializable ({exc}): "
                f"{item!r:.200}; convert it upstream to dict, list, str, int, float, bool or None"
            ) from exc
        self._lines.append(line.encode("utf-8") + b"\n")
        if len(self._lines) >= FLUSH_LINES:
            self._write_lines()

    def flush(self) -> None:
        """Write the lines buffered so far (the runtime calls it before it acknowledges them, with restarts)."""
        self._write_lines()

    def finish(self) -> None:
        """Write the lines still buffered."""
        self._write_lines()

    def teardown(self) -> None:
        """Close the file; lines not written by then are dropped with a warning."""
        if self._lines:
            logger.warning(
                "dropping %d lines for %s that were not written before the run stopped", len(self._lines), self.path
            )
            self._lines = []
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write_lines(self) -> None:
        if not self._lines:
            return
        if self._fd is None:
            raise RuntimeError("WriteJsonLines has no open file: setup() was not called")
        data = memoryview(b"".join(self._lines))
        if self.per_replica:
            _write_all(self._fd, data)
        else:
            # O_APPEND alone puts each write() at the end of the file, but a
            # write() may be partial and NFS does not make appends atomic; the
            # lock keeps every replica's batch whole and in one piece.
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                _write_all(self._fd, data)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._lines = []


def _path_list(node: str, paths: Paths) -> list[str]:
    """``paths`` as a non-empty list of str, checked before anything runs."""
    given = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    if not isinstance(given, (list, tuple)):
        raise TypeError(
            f"{node} takes a path, a glob pattern or a list of them, not {type(paths).__name__}: {paths!r:.200}"
        )
    if not given:
        raise ValueError(f"{node} needs at least one path or pattern, got an empty {type(given).__name__}")
    for path in given:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"{node} paths are str or os.PathLike, got a {type(path).__name__}: {path!r:.200}")
    return [os.fspath(path) for path in given]


def _checked_encoding(node: str, encoding: str) -> str:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise LookupError(f"{node} got an unknown encoding {encoding!r}; try 'utf-8' or 'latin-1'") from None
    return encoding


def _files_of_this_replica(node: str, patterns: list[str], *, expand_directories: bool) -> list[str]:
    """This replica's share of the sorted files that ``patterns`` name: every ``parallelism``-th one."""
    me = context()
    files = _list_files(node, patterns, me.host, expand_directories=expand_directories)
    return files[me.replica :: me.parallelism]


def _list_files(node: str, patterns: list[str], host: str, *, expand_directories: bool) -> list[str]:
    """The absolute paths of the files ``patterns`` name, sorted, each once."""
    cwd = os.getcwd()
    hint = "paths are read on the replica's host, relative to its current directory"
    found: set[str] = set()
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        resolved = os.path.normpath(os.path.join(cwd, expanded))
        if os.path.isdir(resolved):
            if not expand_directories:
                raise IsADirectoryError(
                    f"{node}: {pattern!r} is a directory ({resolved!r}); give a pattern such as "
                    f"{os.path.join(pattern, '*')!r}, or use ReadFiles to read every file under it"
                )
            files = _walk(resolved)
        elif os.path.exists(resolved):  # also a file whose name holds [ or *
            files = [resolved]
        elif _GLOB_CHARACTERS.intersection(pattern):
            # root_dir rather than joining cwd into the pattern: cwd may hold [ or *.
            matches = [os.path.join(cwd, match) for match in glob.glob(expanded, root_dir=cwd, recursive=True)]
            files = [
                file for match in matches
                for file in (_walk(match) if expand_directories and os.path.isdir(match) else [match])
                if os.path.isfile(file)
            ]
            if not files:
                raise FileNotFoundError(
                    f"{node}: no file matches {pattern!r} (resolved as {resolved!r} on host {host!r}); {hint}"
                )
        else:
            raise FileNotFoundError(
                f"{node}: no file {pattern!r} (resolved as {resolved!r} on host {host!r}); {hint}"
            )
        found.update(os.path.abspath(file) for file in files)
    return sorted(found)


def _walk(directory: str) -> list[str]:
    """Every regular file under ``directory``, recursively (symbolic links to directories are not followed)."""
    return [
        os.path.join(root, name)
        for root, _directories, names in os.walk(directory)
        for name in names
        if os.path.isfile(os.path.join(root, name))
    ]


def _lines(path: str, encoding: str) -> Iterator[str]:
    """The lines of the file ``path``, newlines kept; a decoding error names file and line."""
    try:
        with open(path, encoding=encoding) as file:
            yield from file
    except UnicodeDecodeError as exc:
        raise _decode_error(path, encoding, exc, "") from exc


def _decode_error(path: str, encoding: str, exc: UnicodeDecodeError, hint: str) -> ValueError:
    return ValueError(
        f"{path}, line {_first_undecodable_line(path, encoding)}: not valid {encoding} ({exc.reason}); "
        f"pass the file's encoding, e.g. encoding='latin-1'{hint}"
    )


def _first_undecodable_line(path: str, encoding: str) -> int:
    """The number of the line where decoding ``path`` fails.

    ``open()`` decodes in chunks of several lines, so its error does not say
    which line; decoding again a line at a time does. (Splitting at the byte
    ``\\n`` is exact for ASCII-compatible encodings and close for others.)
    """
    decoder = codecs.getincrementaldecoder(encoding)()
    line = 1
    with open(path, "rb") as file:
        for raw in file:
            try:
                line += decoder.decode(raw).count("\n")
            except UnicodeDecodeError:
                return line
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return line
    return line


def _replica_path(path: str, replica: int) -> str:
    if "{replica}" in path:
        return path.replace("{replica}", str(replica))
    root, suffix = os.path.splitext(path)
    return f"{root}-{replica}{suffix}"


def _write_all(fd: int, data: memoryview) -> None:
    """Write all of ``data``: ``os.write`` may write less than it is given."""
    while data:
        data = data[os.write(fd, data) :]
