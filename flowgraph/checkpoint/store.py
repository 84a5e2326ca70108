"""Checkpoints on disk, in one directory: what each replica stored, and which checkpoints are complete.

::

    DIR/
      run.json              the run's settings, for --resume (save_run)
      COMMITTED             {"checkpoint": 42}: every replica committed final checkpoint 42
      ckpt-000041/
        MANIFEST.json       written last: a checkpoint is complete when it has one
        count.0.part        one replica's part (msgpack; the state inside is opaque bytes)
        count.1.part
      ckpt-000042/ ...

A crash (even SIGKILL) at any moment leaves each file either as it was or
as it was meant to be, never half written: every file is written to a
temporary name beside it (``.NAME.*.tmp``, which a crash may leave behind),
fsync'd, renamed over its name with ``os.replace`` and its directory
fsync'd. The manifest lists every part with its size and sha256 and is
written only after all of them, so a checkpoint the crash interrupted has no
manifest and is ignored; one whose files were damaged later is found out by
``latest()``, which falls back to the one before.

Kept: the two newest complete checkpoints (so one more remains should the
newest be damaged), and incomplete ones newer than the newest complete (they
may still be being written). ``complete()`` removes the rest, each one's
manifest first, so a crash while removing leaves an incomplete directory,
which the next ``complete()`` removes. ``clear()`` removes everything, for a
new run in the directory of one that finished.

Nothing here knows about sockets or replicas' code: parts come in as bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import msgpack

from ..errors import CheckpointError

logger = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
RUN = "run.json"
COMMITTED = "COMMITTED"
KEPT = 2
"""How many complete checkpoints ``complete()`` keeps."""
_CHECKPOINT_DIR = re.compile(r"ckpt-(\d+)")
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Part:
    """One replica's share of a checkpoint."""

    replica: str
    """The replica's id, ``node/index``."""
    state: bytes | None
    """The node's state, pickled with cloudpickle; None when it keeps none."""
    position: int = 0
    """A source: how many items it emitted in all (a re-run skips as many); 0 for other nodes."""
    finished: bool = False
    """The replica had ended: its finish() ran and its end of stream went out."""


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint, read back and verified."""

    id: int
    parts: Mapping[str, Part]
    """Every replica's part, by replica id."""
    fingerprint: Mapping[str, Any]
    """The topology it was taken of, as given to ``complete()`` (see ``flowgraph.checkpoint.compat``)."""
    finished: bool
    """The final checkpoint of a run that ended."""


class _Unusable(Exception):
    """Why a checkpoint that has a manifest cannot be used (``latest()`` logs it and skips the checkpoint)."""


class CheckpointStore:
    """The checkpoints of one run (and of the runs that resume it) in ``directory``, which is created.

    Raises ``CheckpointError`` when the directory cannot be created.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     store = CheckpointStore(directory)
    ...     store.write_part(1, Part("count/0", b"state"))
    ...     store.complete(1, ["count/0"], {"topology": "wc"})
    ...     store.latest().parts["count/0"].state
    b'state'
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CheckpointError(f"cannot keep checkpoints in {self.directory}: {error}") from error

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.directory)!r})"

    def save_run(self, settings: Mapping[str, Any]) -> None:
        """Store the run's settings (JSON-able) in ``run.json``, replacing what was there."""
        _write_atomically(self.directory / RUN, json.dumps(dict(settings), indent=2, sort_keys=True).encode())

    def load_run(self) -> dict[str, Any] | None:
        """The settings ``save_run`` stored; None if there are none; ``CheckpointError`` if they cannot be read."""
        run = _read_json(self.directory / RUN)
        if run is not None and not isinstance(run, dict):
            raise CheckpointError(f"{self.directory / RUN} holds no settings, but {type(run).__name__} {run!r}")
        return run

    def write_part(self, checkpoint: int, part: Part) -> None:
        """Store ``part`` of ``checkpoint`` (replacing one written before), durably.

        Any process may write parts, each its own, at the same time.
        """
        directory = self._checkpoint_directory(checkpoint)
        directory.mkdir(exist_ok=True)
        fields = {"replica": part.replica, "state": part.state, "position": part.position, "finished": part.finished}
        _write_atomically(directory / _part_file(part.replica), msgpack.packb(fields, use_bin_type=True))

    def complete(
        self,
        checkpoint: int,
        expected: Iterable[str],
        fingerprint: Mapping[str, Any],
        finished: bool = False,
    ) -> None:
        """Make ``checkpoint`` complete: write its manifest, listing the part of every ``expected`` replica id.

        ``fingerprint`` (JSON-able) describes the topology, for ``--resume``
        to check it against the one it runs; ``finished`` marks the final
        checkpoint of a run that ended. Raises ``CheckpointError`` naming
        the replicas whose part was not written, and writes nothing then.
        Then removes the checkpoints no longer kept (see the module's
        docstring).
        """
        directory = self._checkpoint_directory(checkpoint)
        parts = {}
        missing = []
        for replica in expected:
            path = directory / _part_file(replica)
            try:
                size, sha256 = _file_digest(path)
            except FileNotFoundError:
                missing.append(replica)
                continue
            parts[replica] = {"file": path.name, "size": size, "sha256": sha256}
        if missing:
            raise CheckpointError(f"checkpoint {checkpoint} cannot be completed: no part was written in {directory} "
                                  f"for {', '.join(missing)}")
        directory.mkdir(exist_ok=True)  # a checkpoint of no replicas has no part that made it
        manifest = {"id": checkpoint, "time": time.time(), "finished": finished,
                    "fingerprint": dict(fingerprint), "parts": parts}
        _write_atomically(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
        _fsync_directory(self.directory)
        self._prune()

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint that reads back intact; None if there is none.

        A newer one whose manifest cannot be read, or a part of which is
        missing or does not match the size and sha256 its manifest lists,
        is skipped with a warning naming its directory and why.
        """
        for checkpoint, directory in reversed(self._checkpoint_directories()):
            if not (directory / MANIFEST).exists():
                continue  # interrupted while being taken
            try:
                return _read_checkpoint(checkpoint, directory)
            except _Unusable as problem:
                logger.warning("skipping checkpoint %s: %s", directory, problem)
        return None

    def has_manifest(self) -> bool:
        """True if some checkpoint has a manifest: when ``latest()`` is None all the same, every one is damaged."""
        return any((directory / MANIFEST).exists() for _, directory in self._checkpoint_directories())

    def next_id(self) -> int:
        """The id for the next checkpoint: past every one with a directory, complete or not, so none is reused."""
        return max((checkpoint for checkpoint, _ in self._checkpoint_directories()), default=0) + 1

    def mark_committed(self, checkpoint: int) -> None:
        """Record that every replica committed ``checkpoint``, the final checkpoint of a run that ended."""
        _write_atomically(self.directory / COMMITTED, json.dumps({"checkpoint": checkpoint}).encode())

    def committed(self) -> int | None:
        """The checkpoint ``mark_committed`` recorded; None if none was; ``CheckpointError`` if it cannot be read."""
        marker = _read_json(self.directory / COMMITTED)
        if marker is None:
            return None
        checkpoint = marker.get("checkpoint") if isinstance(marker, dict) else None
        if not _is_int(checkpoint):
            raise CheckpointError(f"{self.directory / COMMITTED} names no checkpoint: {marker!r}")
        return checkpoint

    def clear(self) -> None:
        """Remove every checkpoint, the run's settings and the committed marker, for a new run to start afresh.

        ``run.json`` goes first, so that a crash while clearing leaves no run
        to resume, only checkpoints the next new run clears. The ids start
        at 1 again. Raises ``CheckpointError`` if something cannot be removed.
        """
        try:
            (self.directory / RUN).unlink(missing_ok=True)
            _fsync_directory(self.directory)
            for _, path in self._checkpoint_directories():
                _remove_checkpoint(path)
            (self.directory / COMMITTED).unlink(missing_ok=True)
            _fsync_directory(self.directory)
        except OSError as error:
            raise CheckpointError(f"cannot clear {self.directory} for a new run: {error}") from error

    def _checkpoint_directory(self, checkpoint: int) -> Path:
        return self.directory / f"ckpt-{checkpoint:06d}"

    def _checkpoint_directories(self) -> list[tuple[int, Path]]:
        """Every checkpoint's directory with its id, oldest first."""
        found = []
        for path in self.directory.iterdir():
            matched = _CHECKPOINT_DIR.fullmatch(path.name)
            if matched and path.is_dir():
                found.append((int(matched.group(1)), path))
        return sorted(found)

    def _prune(self) -> None:
        """Remove the checkpoints that are no longer kept (see the module's docstring)."""
        directories = self._checkpoint_directories()
        complete = [checkpoint for checkpoint, path in directories if (path / MANIFEST).exists()]
        kept = complete[-KEPT:]
        for checkpoint, path in directories:
            if checkpoint not in kept and checkpoint < complete[-1]:
                try:
                    _remove_checkpoint(path)
                except OSError as error:
                    logger.warning("could not remove old checkpoint %s: %s", path, error)


def _part_file(replica: str) -> str:
    """The file name of a replica's part: ``node.index.part`` for ``node/index``."""
    node, _, index = replica.rpartition("/")
    if not node or not index.isdigit():
        raise CheckpointError(f"{replica!r} is not a replica id (node/index)")
    return f"{node}.{index}.part"


def _read_checkpoint(checkpoint: int, directory: Path) -> Checkpoint:
    """The checkpoint in ``directory``, verified against its manifest; ``_Unusable`` saying what is wrong."""
    manifest = _read_manifest(checkpoint, directory)
    parts = {}
    for replica, listed in manifest["parts"].items():
        try:
            data = (directory / listed["file"]).read_bytes()
        except FileNotFoundError:
            raise _Unusable(f"part {replica} missing ({listed['file']})") from None
        except OSError as error:
            raise _Unusable(f"part {replica} unreadable ({error})") from error
        if len(data) != listed["size"]:
            raise _Unusable(f"part {replica} corrupt: {len(data)} bytes, the manifest says {listed['size']}")
        if hashlib.sha256(data).hexdigest() != listed["sha256"]:
            raise _Unusable(f"part {replica} corrupt: sha256 mismatch")
        parts[replica] = _decode_part(replica, data)
    return Checkpoint(checkpoint, parts, manifest["fingerprint"], manifest["finished"])


def _read_manifest(checkpoint: int, directory: Path) -> dict[str, Any]:
    """The manifest in ``directory``, checked field by field; ``_Unusable`` if it is not one of ``checkpoint``."""
    try:
        manifest = json.loads((directory / MANIFEST).read_bytes())
    except (OSError, ValueError) as error:
        raise _Unusable(f"manifest unreadable ({error})") from error
    problem = _manifest_problem(checkpoint, manifest)
    if problem:
        raise _Unusable(f"manifest unreadable ({problem})")
    return dict(manifest)


def _manifest_problem(checkpoint: int, manifest: Any) -> str | None:
    """What makes ``manifest`` not the manifest of ``checkpoint``, or None."""
    if not isinstance(manifest, dict):
        return f"a {type(manifest).__name__}, not an object"
    if manifest.get("id") != checkpoint:
        return f"id {manifest.get('id')!r}, not {checkpoint}"
    if not isinstance(manifest.get("finished"), bool) or not isinstance(manifest.get("fingerprint"), dict):
        return "no finished flag or fingerprint"
    parts = manifest.get("parts")
    if not isinstance(parts, dict):
        return "no list of parts"
    for replica, listed in parts.items():
        if not (isinstance(listed, dict) and isinstance(listed.get("file"), str) and _is_int(listed.get("size"))
                and isinstance(listed.get("sha256"), str)):
            return f"part {replica} listed without file, size and sha256"
        if listed["file"] in ("", ".", "..") or "/" in listed["file"]:
            return f"part {replica} listed as {listed['file']!r}, not a file of the checkpoint"
    return None


def _decode_part(replica: str, data: bytes) -> Part:
    """The ``Part`` in ``data``, which must be ``replica``'s; ``_Unusable`` otherwise."""
    try:
        fields = msgpack.unpackb(data)
    except ValueError as error:  # all of msgpack's: ExtraData, FormatError, a map keyed by a list (strict_map_key)
        raise _Unusable(f"part {replica} corrupt: not msgpack ({error})") from error
    if not (isinstance(fields, dict) and fields.get("replica") == replica
            and isinstance(fields.get("state"), (bytes, type(None))) and _is_int(fields.get("position"))
            and isinstance(fields.get("finished"), bool)):
        raise _Unusable(f"part {replica} corrupt: not the part of {replica}")
    return Part(replica, fields["state"], fields["position"], fields["finished"])


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_json(path: Path) -> Any:
    """What the JSON file ``path`` holds; None if it does not exist; ``CheckpointError`` if it cannot be read."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error


def _file_digest(path: Path) -> tuple[int, str]:
    """The size and sha256 (hex) of the file ``path``, read in chunks: a state may be large."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` by a file holding ``data``: after a crash it holds the old content or the new, durably."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    _fsync_directory(path.parent)


def _fsync_directory(path: Path) -> None:
    """Make the names in directory ``path`` durable: a rename is not on disk until its directory is fsync'd."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_checkpoint(path: Path) -> None:
    """Remove a checkpoint's directory, its manifest first: interrupted, it is left incomplete, never half complete."""
    (path / MANIFEST).unlink(missing_ok=True)
    _fsync_directory(path)
    shutil.rmtree(path)
