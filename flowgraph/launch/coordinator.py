"""The launcher side of the control plane.

One ROUTER socket; every worker's agent connects a DEALER to it. A run goes
(the messages are in ``wire.control``):

1. every replica registers the endpoints it bound (ports are picked by the
   kernel, never hard-coded);
2. the launcher sends everyone the address book; replicas connect, wait for
   their broadcast subscribers and run ``setup()``, then report ready;
3. when all are ready the launcher sends start (the start barrier);
4. replicas report done (with their counters) or failed;
5. when all are done the launcher sends shutdown; a replica keeps its
   sockets open until then, so no tail of a stream is lost at close.

Heartbeats go both ways every ``Timeouts.heartbeat_s``. Any failure, a
replica whose process ends before it is done, or a missing heartbeat fails
the run with ``RunFailed`` naming node, replica and host, unless the
``Supervisor`` restarts the replica: then a new incarnation is started, and
when it registered, it gets the address book and everyone else a
``Rewire`` with its endpoints (its producers send it again what they kept
for it), and once ready, the start. Messages of a replaced incarnation are
dropped. In a run with checkpoints (``checkpoints.Checkpointer``) the
launcher also asks the sources for checkpoints, collects the parts, tells
every replica to commit a complete one, and when all are done takes the
final checkpoint and waits for every replica's commit before the
shutdown; a lost replica there is not restarted alone: ``RollBack`` tells
the runner to stop every replica and start them all from the last
complete checkpoint (``roll_back``). In a run with loops it probes each loop's replicas in waves
(``loops.LoopWatch``) and tells the loop's heads to finish once the loop
drained. After a failure or an interrupt, ``stop`` asks every replica to
stop and keeps listening while they end, so the report has their last
counters. Messages without this run's token are logged and dropped before
anything in them is decoded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..errors import CheckpointError, Phase, RunFailed
from ..model.plan import Plan, ReplicaPlan
from ..runtime.security import Curve
from ..runtime.sockets import Wiring, describe_rejection, monitor_handshakes
from ..settings import Timeouts
from ..wire.control import (
    AddressBook,
    Checkpoint,
    Commit,
    Committed,
    Done,
    Drained,
    Failed,
    Heartbeat,
    LoopCounts,
    Message,
    Ready,
    Register,
    ReplicaStats,
    Rewire,
    Shutdown,
    Start,
    Stop,
    Stored,
    decode_control,
    encode_control,
)
from .base import Backend, Exit
from .checkpoints import Checkpointer
from .loops import LoopWatch
from .supervisor import Restart, Supervisor

log = logging.getLogger(__name__)


class RollBack(Exception):
    """A replica was lost in a run with checkpoints and has restarts left: every replica starts again from the
    last complete checkpoint (the runner does it)."""

    def __init__(self, decision: Restart) -> None:
        super().__init__(decision.reason)
        self.decision = decision


@dataclass(frozen=True)
class Finished:
    """What a replica reported when it finished cleanly."""

    stats: ReplicaStats
    collected: list[Any] | None


class Coordinator:
    """Drives one run: address book, start barrier, heartbeats, completion, failure, stop."""

    def __init__(self, context: zmq.Context, plan: Plan, token: bytes, backend: Backend, timeouts: Timeouts,
                 curve: Curve | None = None, checkpointer: Checkpointer | None = None) -> None:
        self._plan = plan
        self.supervisor = Supervisor(plan)
        self.checkpointer = checkpointer
        self._final: int | None = None
        """The id of the final checkpoint, once every replica is done."""
        self._committed: set[str] = set()
        """Replicas that committed the final checkpoint."""
        self.on_restart: Callable[[Restart], str] | None = None
        """Starts a lost replica's new incarnation and says on which host (the runner sets it: the backend)."""
        self.placement = {replica.id: replica.host for replica in plan.replicas}
        """Where each replica runs now (a restart may move one off a lost host)."""
        self._token = token
        self._backend = backend
        self._timeouts = timeouts
        self._replicas: dict[str, ReplicaPlan] = {r.id: r for r in plan.replicas}
        self._loops = [LoopWatch(loop.index, frozenset(r.id for r in plan.replicas if r.node in loop.nodes))
                       for loop in plan.loops]
        wiring = Wiring(backend.control_bind, curve=curve)
        self._socket = context.socket(zmq.ROUTER)
        self._socket.linger = 0
        wiring.secure(self._socket, serve=True)
        self.endpoint = wiring.bind(self._socket, "control")
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._monitor: zmq.Socket | None = None
        if not wiring.is_inproc:
            self._monitor = context.socket(zmq.PAIR)
            self._monitor.connect(monitor_handshakes(self._socket))
            self._poller.register(self._monitor, zmq.POLLIN)
        self._identities: dict[str, bytes] = {}
        self._last_seen: dict[str, float] = {}
        self._endpoints: dict[str, dict[str, str]] = {}
        self._ready: set[str] = set()
        self._done: dict[str, Finished] = {}
        self._rejected = 0
        self._stopping = False
        self._book_sent = False
        self._start_sent = False
        self.started_at: float | None = None
        """``time.monotonic()`` when the start barrier opened."""
        self.live: dict[str, ReplicaStats] = {}
        """The latest counters of each replica (from heartbeats, then from done or failed)."""
        self.last_heard_at: dict[str, float] = {}
        """Wall-clock time (epoch seconds) each replica was last heard from."""
        self.ended: set[str] = set()
        """Replicas whose process or thread has ended."""

    def serve(self, on_tick: Callable[[], None] | None = None) -> dict[str, Finished]:
        """Run the protocol until every replica is done; raises ``RunFailed``.

        ``on_tick`` is called about ten times a second (the progress view).
        """
        timeouts = self._timeouts
        register_deadline = time.monotonic() + timeouts.register_s
        next_beat = 0.0
        total = len(self._replicas)
        while not self._finished():
            self._receive(timeouts.stop_check_ms)
            now = time.monotonic()
            if now >= next_beat:
                self._broadcast(Heartbeat())
                next_beat = now + timeouts.heartbeat_s
            self._check_exits()
            self._check_heartbeats(now)
            if not self._book_sent and len(self._endpoints) == total:
                self._broadcast(AddressBook(self._endpoints))
                self._book_sent = True
            if not self._start_sent and len(self._ready) == total:
                self.started_at = self.started_at or time.monotonic()
                self._broadcast(Start())
                self._start_sent = True
            if not self._book_sent and now > register_deadline:
                missing = sorted(set(self._replicas) - set(self._endpoints))
                raise self._failure(missing[0], f"did not register within {timeouts.register_s:g} s")
            if self.checkpointer is not None and self._start_sent:
                self._checkpoint()
            if self._loops and self._start_sent:
                self._probe_loops(now)
            if on_tick is not None:
                on_tick()
        if self.checkpointer is not None and self._final is not None:
            self.checkpointer.store.mark_committed(self._final)
        self._broadcast(Shutdown())
        return self._done

    def _finished(self) -> bool:
        """Every replica is done (with checkpoints: and committed the final checkpoint)."""
        if len(self._done) < len(self._replicas):
            return False
        return self.checkpointer is None or (self._final is not None and len(self._committed) == len(self._replicas))

    def _checkpoint(self) -> None:
        """Start a checkpoint when one is due; once every replica is done, the final one."""
        checkpointer = self.checkpointer
        assert checkpointer is not None
        if len(self._done) == len(self._replicas):
            if self._final is None:
                self._final = checkpointer.finish()
                self._broadcast(Commit(self._final, final=True))
            return
        due = checkpointer.due()
        if due is not None:
            checkpoint, sources = due
            for replica_id in sources:
                if replica_id in self._identities:
                    self._send(replica_id, Checkpoint(checkpoint))

    def _probe_loops(self, now: float) -> None:
        """Start the next wave of each loop not drained yet, when it is due."""
        for watch in self._loops:
            probe = watch.probe(now)
            if probe is not None:
                for replica_id in watch.replicas:
                    self._send(replica_id, probe)

    def _loop_answered(self, replica_id: str, counts: LoopCounts) -> None:
        watch = self._loops[counts.loop] if 0 <= counts.loop < len(self._loops) else None
        if watch is not None and watch.answer(replica_id, counts):
            log.info("loop %d drained: its heads finish", counts.loop)
            heads = self._plan.loops[counts.loop].heads
            for replica in self._plan.replicas:
                if replica.node in heads:
                    self._send(replica.id, Drained(counts.loop))

    def roll_back(self, decision: Restart) -> None:
        """Stop every replica (killing what does not end) and forget them: the runner starts them all again."""
        self._stopping = True
        self._broadcast(Stop(f"{decision.replica} was lost: rolling back to the last checkpoint"))
        if not self._wait_for_exits(self._timeouts.stop_grace_s):
            self._backend.kill()
            if not self._wait_for_exits(self._timeouts.stop_grace_s):
                raise self._failure(decision.replica, f"{decision.reason}, and the run could not be rolled back: "
                                                      "some replicas did not end")
        self._stopping = False
        self.supervisor.roll_back()
        if self.checkpointer is not None:
            self.checkpointer.roll_back()
        now = time.monotonic()
        self._identities.clear()
        self._endpoints.clear()
        self._ready.clear()
        self._done.clear()
        self._committed.clear()
        self._final = None
        self._book_sent = self._start_sent = False
        self._last_seen = dict.fromkeys(self._replicas, now)
        self.ended.clear()

    def stop(self, reason: str) -> bool:
        """Ask every replica that ever spoke to stop; kill what is left after the grace. True if all ended.

        Meanwhile it keeps listening: a stopped replica's last counters
        arrive in a last heartbeat, and errors of other replicas are only
        logged now.
        """
        self._stopping = True
        self._broadcast(Stop(reason))
        if self._wait_for_exits(self._timeouts.stop_grace_s):
            return True
        self._backend.kill()
        return self._wait_for_exits(self._timeouts.stop_grace_s)

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.close(linger=0)
        self._socket.close()

    def _wait_for_exits(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self._backend.wait(0):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._receive(max(1, min(self._timeouts.stop_check_ms, int(left * 1000))))
        self._receive(0)
        return True

    def _receive(self, timeout_ms: int) -> None:
        """Handle every message that arrives within ``timeout_ms``."""
        events = dict(self._poller.poll(timeout_ms))
        if self._socket in events:
            while self._socket.poll(0):
                self._handle(self._socket.recv_multipart())
        if self._monitor is not None and self._monitor in events:
            log.warning("rejected a connection to the control port %s (not a worker of this run)",
                        describe_rejection(recv_monitor_message(self._monitor)))

    def _handle(self, frames: list[bytes]) -> None:
        identity, *rest = frames
        envelope = decode_control(self._token, rest)
        if envelope is None or envelope.replica not in self._replicas:
            self._rejected += 1
            if self._rejected <= 5 or self._rejected % 1000 == 0:
                log.warning("rejected a control message not from this run (%d frames); %d so far",
                            len(rest), self._rejected)
            return
        replica_id, message = envelope.replica, envelope.message
        if envelope.incarnation != self.supervisor.incarnation(replica_id):
            return  # from an incarnation since replaced (or a zombie cut off from the run)
        self._identities[replica_id] = identity
        self._last_seen[replica_id] = time.monotonic()
        self.last_heard_at[replica_id] = time.time()
        if isinstance(message, Register):
            self._endpoints[replica_id] = dict(message.endpoints)
            if self._book_sent:  # a restarted replica: it learns everyone's endpoints, everyone learns its own
                self._send(replica_id, AddressBook(self._endpoints))
                self._broadcast(Rewire(replica_id, envelope.incarnation, message.endpoints), but=replica_id)
        elif isinstance(message, Ready):
            self._ready.add(replica_id)
            if self._start_sent:
                self._send(replica_id, Start())
        elif isinstance(message, Heartbeat):
            if message.stats is not None:
                self.live[replica_id] = message.stats
        elif isinstance(message, Done):
            self._done[replica_id] = Finished(message.stats, envelope.attachment)
            self.live[replica_id] = message.stats
        elif isinstance(message, Stored):
            if self.checkpointer is not None:
                completed = self.checkpointer.stored(replica_id, message.checkpoint, envelope.attachment,
                                                     message.final)
                if completed is not None:
                    self._broadcast(Commit(completed))
        elif isinstance(message, LoopCounts):
            self._loop_answered(replica_id, message)
        elif isinstance(message, Committed):
            if message.checkpoint == self._final:
                self._committed.add(replica_id)
        elif isinstance(message, Failed):
            self.live[replica_id] = message.stats
            what = f"failed in {message.phase.description}: {message.message}"
            if self._stopping:
                log.warning("while stopping: %s", self._failure(replica_id, what).args[0])
                return
            if message.phase is Phase.CHECKPOINT and message.fatal:
                raise CheckpointError(message.message.removeprefix("CheckpointError: "))
            if message.fatal:
                raise self._failure(replica_id, what, phase=message.phase, remote_traceback=message.traceback,
                                    item=message.item)
            self._lost(replica_id, what, phase=message.phase, remote_traceback=message.traceback,
                       item=message.item)
        else:
            log.warning("%s sent %s, which only the launcher sends", replica_id, type(message).__name__)

    def _check_exits(self) -> None:
        for ended in self._backend.exits():
            if ended.incarnation != self.supervisor.incarnation(ended.replica):
                continue  # an incarnation replaced already
            self.ended.add(ended.replica)
            if ended.replica in self._done and ended.clean:
                continue
            if ended.replica in self._done:
                log.warning("%s %s after it was done", ended.replica, ended.description)
                continue
            self._await_last_words(ended.replica)
            if ended.incarnation == self.supervisor.incarnation(ended.replica):  # its error did not restart it
                self._lost(ended.replica, _died(ended), host_lost=ended.host_lost, signal_name=ended.signal_name)

    def _lost(self, replica_id: str, what: str, phase: Phase = Phase.RUNTIME, host_lost: bool = False,
              **details: Any) -> None:
        """Replica ``replica_id`` is lost (``what`` happened): restart it, or fail the run with ``RunFailed``."""
        decision = self.supervisor.lost(replica_id, what.split("\n", 1)[0], phase, host_lost)
        if isinstance(decision, str):
            raise self._failure(replica_id, what + decision, phase=phase, **details)
        if self.checkpointer is not None:
            log.warning("rolling back every replica to checkpoint %d: %s %s", self.checkpointer.completed,
                        replica_id, decision.reason)
            raise RollBack(decision)
        log.warning("restarting %s (incarnation %d): %s", replica_id, decision.incarnation, decision.reason)
        identity = self._identities.pop(replica_id, None)
        if identity is not None:  # a thread cannot be killed: the replaced incarnation is asked to stop
            self._socket.send_multipart([identity, *encode_control(self._token, Stop("replaced"))])
        self._ready.discard(replica_id)
        self._last_seen[replica_id] = time.monotonic()
        self.ended.discard(replica_id)
        assert self.on_restart is not None, "the runner sets on_restart before the run starts"
        self.placement[replica_id] = self.on_restart(decision)

    def _await_last_words(self, replica_id: str) -> None:
        """Handle what arrives for ``last_words_s``: a replica that failed may end before its error arrives.

        Its error message travels through its agent's socket, which delivers
        after the replica's thread or process is gone; the error (raised
        here, or the restart it caused) names the cause, where the exit alone
        would only say it died.
        """
        incarnation = self.supervisor.incarnation(replica_id)
        deadline = time.monotonic() + self._timeouts.last_words_s
        while (left := deadline - time.monotonic()) > 0 and self.supervisor.incarnation(replica_id) == incarnation:
            if self._socket.poll(max(1, int(left * 1000))):
                self._handle(self._socket.recv_multipart())

    def _check_heartbeats(self, now: float) -> None:
        timeout = self._backend.heartbeat_timeout_s
        if timeout is None:
            return
        for replica_id, seen in list(self._last_seen.items()):
            if replica_id not in self._done and now - seen > timeout:
                self._lost(replica_id, f"stopped answering: no heartbeat for {timeout:g} s", host_lost=True)

    def _broadcast(self, message: Message, but: str | None = None) -> None:
        frames = encode_control(self._token, message)
        for replica_id, identity in self._identities.items():
            if replica_id != but:
                self._socket.send_multipart([identity, *frames])

    def _send(self, replica_id: str, message: Message) -> None:
        self._socket.send_multipart([self._identities[replica_id], *encode_control(self._token, message)])

    def _failure(self, replica_id: str, what: str, phase: Phase = Phase.RUNTIME, **details: Any) -> RunFailed:
        replica = self._replicas[replica_id]
        host = self.placement[replica_id]
        message = f"node {replica.node!r} replica {replica.index} on {host} {what}"
        if details.get("item") is not None:
            message += f"\n  while processing item: {details['item']}"
        return RunFailed(message, node=replica.node, replica=replica.index, host=host, phase=phase, **details)


def _died(ended: Exit) -> str:
    text = f"died: {ended.description}"
    if ended.stderr_tail:
        text += "; its last output:\n" + ended.stderr_tail.rstrip()
    return text
