"""The configuration a worker runs one replica from, sent to it as it is (pickled, on its stdin)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..model.plan import replica_id
from ..settings import Timeouts
from .sockets import Wiring


@dataclass(frozen=True)
class WorkerConfig:
    """Everything one replica needs besides its sockets; the launcher makes one per replica."""

    token: bytes
    """The run's random token: every data and control message carries it."""
    control: str
    """The launcher's control endpoint, as this worker reaches it."""
    node: str
    index: int
    plan: bytes
    """cloudpickle of the plan (it carries by_key functions)."""
    code: bytes
    """cloudpickle of this replica's ``NodeSpec``: only its own node's code loads here."""
    wiring: Wiring
    """Where its data sockets bind, what they advertise, the run's CURVE keys."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    silence_s: float = 10.0
    """It gives the launcher up after this long without a heartbeat (a local or a remote worker's)."""
    incarnation: int = 0
    """Which start of the replica (0 the first; a restart counts up): every frame it sends carries it."""
    skip: int = 0
    """A restarted source: how many of its items were acknowledged already."""
    host: str | None = None
    """The host it runs on, when a restart moved it off the planned one."""
    checkpointing: bool = False
    """A run with ``--checkpoint``: it takes part in checkpoints (``runtime.snapshots``)."""
    restore: Any = None
    """Its part (a ``checkpoint.store.Part``) of the checkpoint it starts from, or None."""
    restored_from: int = 0
    """The id of the checkpoint the run starts from (0: the beginning)."""
    params: Mapping[str, Any] = field(default_factory=dict)
    collect: bool = False
    """Record every input item and hand the list to the launcher (``flowgraph.testing``)."""
    log_level: int = logging.WARNING
    sys_path: tuple[str, ...] = ()
    """The launcher's sys.path, for workers on this machine."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """The text of the user's source files by file name, so tracebacks show their lines on any host."""

    @property
    def replica_id(self) -> str:
        return replica_id(self.node, self.index)
