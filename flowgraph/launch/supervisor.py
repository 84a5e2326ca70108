"""Whether a lost replica is restarted or fails the run: the budget, the node's kind, and what is counted.

A replica is lost when it dies, stops answering heartbeats, loses its host
or fails in its code with ``on_error="fail"``. It is restarted (a new
incarnation: same node, index and key range) if its node has a restart
budget left (``restarts=``, else ``--restarts``) and keeps no state a
restart would lose (``NodeSpec.restartable``); otherwise the run fails as
it always did, and the message says why it was not restarted. Pure
bookkeeping: the coordinator acts on what ``lost`` decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Phase
from ..model.plan import Plan


@dataclass(frozen=True)
class Restart:
    """Start ``replica`` again, as ``incarnation``, because of ``reason``."""

    replica: str
    incarnation: int
    reason: str
    host_lost: bool = False
    """Its host seems gone (ssh lost, no heartbeat): start it elsewhere if its node may run elsewhere."""


@dataclass
class _Record:
    incarnation: int = 0
    reasons: list[str] = field(default_factory=list)


class Supervisor:
    """The restarts of one run, replica by replica."""

    def __init__(self, plan: Plan) -> None:
        self._nodes = {node.name: node for node in plan.nodes}
        self._records = {replica.id: _Record() for replica in plan.replicas}
        self._checkpointing = plan.checkpointing
        """A failure rolls every replica back to a checkpoint: state is restored, so every node may restart."""

    def incarnation(self, replica_id: str) -> int:
        """The replica's current incarnation (0 until its first restart)."""
        return self._records[replica_id].incarnation

    def reasons(self, replica_id: str) -> tuple[str, ...]:
        """Why the replica was restarted, each time."""
        return tuple(self._records[replica_id].reasons)

    @property
    def restarts(self) -> int:
        """Restarts so far, every replica together."""
        return sum(len(record.reasons) for record in self._records.values())

    def lost(self, replica_id: str, reason: str, phase: Phase = Phase.RUNTIME,
             host_lost: bool = False) -> Restart | str:
        """The replica was lost for ``reason``: a ``Restart``, or why not (appended to the failure's message).

        With no budget (the default) the answer is "" and the run fails exactly as without supervision.
        """
        node = self._nodes[replica_id.rpartition("/")[0]]
        record = self._records[replica_id]
        if node.restarts == 0:
            return ""
        if phase is Phase.LOAD:
            return "; not restarted: its code cannot be loaded there, and would not be the next time"
        if not node.restartable and not self._checkpointing:
            return (f"; not restarted: {node.kind.value} {node.name!r} keeps state a restart would lose (declare "
                    "restartable = True on its class if its setup() rebuilds all it needs)")
        if len(record.reasons) >= node.restarts:
            return (f"; not restarted again: it was restarted {len(record.reasons)} times, its budget "
                    f"(restarts={node.restarts})")
        record.incarnation += 1
        record.reasons.append(reason)
        return Restart(replica_id, record.incarnation, reason, host_lost)

    def roll_back(self) -> None:
        """Every replica is started again (from a checkpoint): each is a new incarnation; only the one that was
        lost (``lost`` counted it already) spends its budget."""
        newest = max(record.incarnation for record in self._records.values())
        for record in self._records.values():
            record.incarnation = newest
