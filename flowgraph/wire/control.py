"""Control messages between the launcher and the replicas' agents: typed records and their frames.

Every message is a frozen record whose class says its kind (``ControlKind``).
On the wire a message is ``[magic + token, kind, JSON body]`` with an
optional fourth frame, a pickled attachment (collected items for
``flowgraph.testing``). Unpickling is code execution: the token is checked
before anything else is looked at, and a body that does not fit its record
is rejected like a stranger's message.

A run goes (``launch.coordinator`` drives it)::

    replica  → launcher   Register(endpoints)            what it bound
    launcher → replicas   AddressBook(replicas)          everyone's endpoints
    replica  → launcher   Ready()                        connected, set up
    launcher → replicas   Start()                        the start barrier
    replica  → launcher   Done(stats) | Failed(...)      its end
    launcher → replicas   Shutdown() | Stop(reason)      close now | stop now

with checkpoints, meanwhile::

    launcher → sources    Checkpoint(n)                  send barrier n (``wire.frames.Kind.BARRIER``)
    replica  → launcher   Stored(n, final)               its part of checkpoint n, attached
    launcher → replicas   Commit(n)                      checkpoint n is complete
    replica  → launcher   Committed(n)                   for the final checkpoint, before Shutdown

with loops, meanwhile (``launch.loops``)::

    launcher → a loop's replicas   Probe(loop, wave)      your counts, please
    replica  → launcher            LoopCounts(...)        items sent and done in the loop, quiet or not
    launcher → the loop's heads    Drained(loop)          nothing is in flight in the loop: finish

and ``Heartbeat`` both ways every ``Timeouts.heartbeat_s`` (a replica's carries its counters).
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import json
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import Phase
from . import serializers

CONTROL_MAGIC = b"FGC1"
TOKEN_BYTES = 16


class ControlKind(enum.Enum):
    """What a control message is; the second frame on the wire."""

    REGISTER = "register"
    READY = "ready"
    HEARTBEAT = "heartbeat"
    DONE = "done"
    FAILED = "failed"
    ADDRESS_BOOK = "address_book"
    START = "start"
    STOP = "stop"
    SHUTDOWN = "shutdown"
    REWIRE = "rewire"
    CHECKPOINT = "checkpoint"
    STORED = "stored"
    COMMIT = "commit"
    COMMITTED = "committed"
    PROBE = "probe"
    LOOP_COUNTS = "loop_counts"
    DRAINED = "drained"


@dataclass(frozen=True)
class EdgeStats:
    """What one replica sent on one output edge so far."""

    items: int = 0
    batches: int = 0
    bytes: int = 0
    blocked_s: float = 0.0
    """Time spent waiting for a consumer to have room (backpressure)."""


@dataclass(frozen=True)
class ReplicaStats:
    """A replica's counters as it reports them (heartbeats, done, failed)."""

    items_in: int = 0
    """Items received (a source: 0)."""
    items_out: int = 0
    """Items emitted (a sink: 0)."""
    busy_s: float = 0.0
    """Time in user code: process(), generate(), finish()."""
    started_at: float = 0.0
    """Wall-clock time (epoch seconds) it passed the start barrier; 0 before."""
    ended_at: float = 0.0
    """Wall-clock time (epoch seconds) it ended, cleanly or not; 0 while it runs."""
    errors: int = 0
    """Exceptions its code raised on items (each attempt counts)."""
    retries: int = 0
    """Attempts after the first."""
    skipped: int = 0
    """Items given up and dropped (``on_error="skip"``)."""
    dead_lettered: int = 0
    """Items given up and sent to its error stream (``on_error="dead_letter"``)."""
    acked: int = 0
    """With restarts, a source's items acknowledged all the way down, in order: a restart skips as many."""
    replayed: int = 0
    """Items it sent again to restarted consumer replicas."""
    incarnation: int = 0
    """Which start of the replica: how often it was restarted before."""
    edges: Mapping[str, EdgeStats] = field(default_factory=dict)
    """Per output edge, by edge name (``upstream->downstream``)."""
    in_flight: int = 0
    """Items taken and not completed yet (with ``concurrency=``, up to that many)."""
    peak_in_flight: int = 0
    """The most items it had in flight at once (with ``concurrency=``; else 0)."""
    spilled: int = 0
    """Messages its feedback edges wrote to disk."""

    @property
    def blocked_s(self) -> float:
        """Time blocked on backpressure, all output edges together (it waits on one at a time)."""
        return sum(edge.blocked_s for edge in self.edges.values())

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ReplicaStats:
        edges = {name: EdgeStats(**stats) for name, stats in body.get("edges", {}).items()}
        return cls(**{**body, "edges": edges})


@dataclass(frozen=True)
class Register:
    """A replica bound its sockets: ``endpoints`` by slot (``in``, ``out:<node>``, ``credit:<node>``)."""

    kind: ClassVar[ControlKind] = ControlKind.REGISTER
    endpoints: Mapping[str, str]


@dataclass(frozen=True)
class Ready:
    """A replica connected to its peers and ran ``setup()``."""

    kind: ClassVar[ControlKind] = ControlKind.READY


@dataclass(frozen=True)
class Heartbeat:
    """I am alive; from a replica with its counters, from the launcher without."""

    kind: ClassVar[ControlKind] = ControlKind.HEARTBEAT
    stats: ReplicaStats | None = None


@dataclass(frozen=True)
class Done:
    """A replica finished cleanly: end of stream sent on every output."""

    kind: ClassVar[ControlKind] = ControlKind.DONE
    stats: ReplicaStats


@dataclass(frozen=True)
class Failed:
    """A replica failed in ``phase``; the launcher stops the run with ``RunFailed``."""

    kind: ClassVar[ControlKind] = ControlKind.FAILED
    phase: Phase
    message: str
    """``ExceptionType: message``."""
    traceback: str
    """The traceback of the user's frames (``errors.user_traceback``)."""
    item: str | None
    """A truncated repr of the item being processed, if any."""
    stats: ReplicaStats
    """Its counters as far as it got."""
    fatal: bool = False
    """A restart would not help (a poison item): the run fails, whatever the restart budget."""


@dataclass(frozen=True)
class AddressBook:
    """Every replica's endpoints, by replica id and slot; sent once all registered."""

    kind: ClassVar[ControlKind] = ControlKind.ADDRESS_BOOK
    replicas: Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class Start:
    """Every replica is ready: items may flow (the start barrier)."""

    kind: ClassVar[ControlKind] = ControlKind.START


@dataclass(frozen=True)
class Stop:
    """Stop now, without finishing (a failure elsewhere, an interrupt)."""

    kind: ClassVar[ControlKind] = ControlKind.STOP
    reason: str


@dataclass(frozen=True)
class Shutdown:
    """Every replica is done: close the sockets and exit (no consumer needs them any more)."""

    kind: ClassVar[ControlKind] = ControlKind.SHUTDOWN


@dataclass(frozen=True)
class Rewire:
    """Replica ``replica`` was restarted as ``incarnation`` and bound ``endpoints``: its peers reconnect."""

    kind: ClassVar[ControlKind] = ControlKind.REWIRE
    replica: str
    incarnation: int
    endpoints: Mapping[str, str]


@dataclass(frozen=True)
class Checkpoint:
    """Launcher → running sources: take checkpoint ``checkpoint`` (record your position, send its barrier)."""

    kind: ClassVar[ControlKind] = ControlKind.CHECKPOINT
    checkpoint: int


@dataclass(frozen=True)
class Stored:
    """Replica → launcher: its part of ``checkpoint`` (the attachment, a ``checkpoint.store.Part``);
    ``final``: its part as it ended, which serves every checkpoint it has no part of."""

    kind: ClassVar[ControlKind] = ControlKind.STORED
    checkpoint: int
    final: bool = False


@dataclass(frozen=True)
class Commit:
    """Launcher → replicas: ``checkpoint`` is complete; a two-phase sink makes what it staged before it visible."""

    kind: ClassVar[ControlKind] = ControlKind.COMMIT
    checkpoint: int
    final: bool = False
    """The final checkpoint of the run: a replica commits it, then runs ``teardown()`` and says ``Committed``."""


@dataclass(frozen=True)
class Committed:
    """Replica → launcher: it committed the final ``checkpoint`` and ran ``teardown()``; it waits for the shutdown."""

    kind: ClassVar[ControlKind] = ControlKind.COMMITTED
    checkpoint: int


@dataclass(frozen=True)
class Probe:
    """Launcher → every replica of loop ``loop``: answer ``LoopCounts`` for ``wave``."""

    kind: ClassVar[ControlKind] = ControlKind.PROBE
    loop: int
    wave: int


@dataclass(frozen=True)
class LoopCounts:
    """Replica → launcher: its counts in loop ``loop`` when ``wave`` reached it.

    ``sent``: items it emitted on the loop's edges (one per consumer replica
    reached); ``done``: items from the loop's edges it completed (their
    outputs emitted); ``quiet``: its inputs from outside the loop ended and
    it holds no item in flight.
    """

    kind: ClassVar[ControlKind] = ControlKind.LOOP_COUNTS
    loop: int
    wave: int
    sent: int
    done: int
    quiet: bool


@dataclass(frozen=True)
class Drained:
    """Launcher → the heads of loop ``loop``: every source ended and nothing is in flight in it; finish."""

    kind: ClassVar[ControlKind] = ControlKind.DRAINED
    loop: int


Message = (Register | Ready | Heartbeat | Done | Failed | AddressBook | Start | Stop | Shutdown | Rewire | Checkpoint
           | Stored | Commit | Committed | Probe | LoopCounts | Drained)
_RECORDS: dict[ControlKind, type[Any]] = {
    record.kind: record
    for record in (Register, Ready, Heartbeat, Done, Failed, AddressBook, Start, Stop, Shutdown, Rewire, Checkpoint,
                   Stored, Commit, Committed, Probe, LoopCounts, Drained)
}
_FIELDS: dict[str, Callable[[Any], Any]] = {
    "stats": lambda body: None if body is None else ReplicaStats.from_body(body),
    "phase": Phase,
}
"""How a JSON body's fields become typed again: by field name, the same in every record that has it."""


@dataclass(frozen=True)
class Envelope:
    """A decoded control message: who sent it (a replica id and incarnation; none from the launcher), what, and
    its attachment."""

    message: Message
    replica: str | None = None
    attachment: Any = None
    incarnation: int = 0


def encode_control(token: bytes, message: Message, replica: str | None = None, attachment: Any = None,
                   incarnation: int = 0) -> list[bytes]:
    """The frames of ``message``; ``replica`` and ``incarnation`` name the sender when a replica's agent sends it."""
    body = dataclasses.asdict(message)
    if replica is not None:
        body["_from"] = [replica, incarnation]
    frames = [CONTROL_MAGIC + token, message.kind.value.encode(), json.dumps(body).encode()]
    if attachment is not None:
        frames.append(serializers.dumps(attachment))
    return frames


def decode_control(token: bytes, frames: Sequence[bytes]) -> Envelope | None:
    """The message in ``frames`` if it is a well-formed control message of this run, else None."""
    if len(frames) not in (3, 4):
        return None
    header = bytes(frames[0])
    if len(header) != len(CONTROL_MAGIC) + TOKEN_BYTES or not header.startswith(CONTROL_MAGIC):
        return None
    if not hmac.compare_digest(header[len(CONTROL_MAGIC):], token):
        return None
    try:
        record = _RECORDS[ControlKind(bytes(frames[1]).decode())]
        body = json.loads(bytes(frames[2]))
        replica, incarnation = body.pop("_from", (None, 0))
        message = record(**{name: _FIELDS.get(name, _same)(value) for name, value in body.items()})
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError):
        return None  # a body that does not fit its record: a bug or a stranger, rejected alike
    if not (replica is None or isinstance(replica, str)) or not isinstance(incarnation, int):
        return None
    attachment = pickle.loads(frames[3]) if len(frames) == 4 else None
    return Envelope(message, replica, attachment, incarnation)


def _same(value: Any) -> Any:
    return value
