"""Where a run with checkpoints starts: its saved parameters, and the checkpoint it continues from.

``DIR/run.json`` keeps the parameters of the run (``--set``, hosts and
their ssh settings, restarts, the interval); ``--resume DIR`` uses them unless given again.
A new run (without ``--resume``) in a directory whose run did not finish is
refused, so that a typo does not throw away hours of work; one whose run
finished starts afresh there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..checkpoint.compat import check_compatible
from ..checkpoint.rescale import assign_parts
from ..checkpoint.store import CheckpointStore, Part
from ..errors import CheckpointError
from ..model.plan import Plan

SAVED = ("params", "hosts", "restarts", "checkpoint_interval_s", "ssh_config", "remote_python", "advertise")
"""The run parameters ``DIR/run.json`` keeps."""


@dataclass(frozen=True)
class StartingPoint:
    """The checkpoint a run starts from."""

    checkpoint: int = 0
    """Its id (0: the beginning)."""
    parts: Mapping[str, Part] = field(default_factory=dict)
    """Each replica's part, by replica id."""
    finished: bool = False
    """The run had ended and committed everything: nothing is left to do."""


def saved_parameters(store: CheckpointStore, given: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of a resumed run: those ``given`` (not None), else those saved in the store."""
    saved = store.load_run()
    if saved is None:
        raise CheckpointError(f"{store.directory} holds no run to resume (no run.json): start it with --checkpoint "
                              f"{store.directory} instead")
    return {name: given[name] if given.get(name) is not None else saved.get(name) for name in SAVED}


def starting_point(store: CheckpointStore, plan: Plan, fingerprint: Mapping[str, Any], resume: bool) -> StartingPoint:
    """Where the run planned as ``plan`` starts; raises ``CheckpointError`` if the store cannot serve it.

    Resumed: from the newest complete checkpoint (or the beginning if none
    completed: nothing was committed yet). New: from the beginning, after
    the store of a finished earlier run is cleared.
    """
    latest = store.latest()
    if not resume:
        if store.load_run() is not None and not (latest is not None and latest.finished
                                                 and store.committed() == latest.id):
            raise CheckpointError(
                f"{store.directory} holds checkpoints of a run that did not finish: continue it with --resume "
                f"{store.directory}, or remove the directory to start again")
        store.clear()
        return StartingPoint()
    if latest is None:
        if store.has_manifest():
            raise CheckpointError(
                f"{store.directory}: no complete checkpoint there reads back intact (see the warnings above); "
                "starting again from the beginning could repeat what they committed: remove the directory to "
                "start again")
        return StartingPoint()
    check_compatible(latest.fingerprint, fingerprint)
    if latest.finished and store.committed() == latest.id:
        return StartingPoint(latest.id, {}, finished=True)
    return StartingPoint(latest.id, assign_parts(latest, plan, fingerprint))


def hosts_parameter(hosts: str | Sequence[str] | None) -> list[str] | str | None:
    """``hosts`` as ``run.json`` keeps it (JSON)."""
    return hosts if hosts is None or isinstance(hosts, str) else list(hosts)
