"""The receiving end of a replica: its PULL and SUB sockets, checked messages, end-of-stream accounting.

``Inputs`` checks every message (header and token before any unpickling),
keeps per-producer sequence numbers, counts end-of-stream marks and grants
credit to the producers of demand-driven shuffle inputs (``demand``).

Checkpoint barriers are aligned (``alignment``): once checkpoint n is
aligned, ``receive`` returns ``Barrier(n)`` (the replica stores its part
and forwards the barrier), then what was held back meanwhile. A held batch
is not decoded and its credit not granted until it is delivered, so while
a checkpoint aligns, the memory it holds is bounded by what the aligned
producers can send meanwhile (credit bounds a demand-driven shuffle's).
Waiting also watches the replica's control pipe, so a stop request
interrupts a replica blocked on an empty input.

A loop's head (a node fed by a feedback edge) is done once its other inputs
ended and the launcher found the loop drained (``ControlPipe.drained``);
the feedback edges' end of stream comes after its ``finish()``
(``feedback_ended``). Every batch says whether it came on an edge of the
replica's loop (``Batch.loop``): those count for the loop's termination.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import zmq

from ..model.plan import IN_SLOT, ConnectPlan, Plan, ReplicaPlan, replica_id
from ..settings import BufferSettings
from ..wire import serializers
from ..wire.frames import Header, Kind, Sender, decode_header, identification, split, topic
from .acks import Acknowledger
from .alignment import Alignment, AlignmentError
from .counters import Counters
from .demand import Grants
from .edges import AddressBook
from .failures import ProtocolError
from .pipe import ControlPipe
from .sockets import Wiring, ready_to_read, recv_frames

log = logging.getLogger(__name__)

_DATA = (Kind.BATCH, Kind.EOS, Kind.POISON, Kind.BARRIER)
"""What may arrive on a data socket (credit and acknowledgements go the other way)."""



class Batch(NamedTuple):
    """A batch received: from where (``context().input``), its items, and which message it was."""

    upstream: str
    items: list[Any]
    sender: Sender
    incarnation: int
    seq: int
    poison: bool = False
    """Its one item killed this replica every time (``keeping``): it is set aside, not processed."""
    loop: bool = False
    """It came on an edge of the replica's loop."""


class Barrier(NamedTuple):
    """Every input delivered the barrier of ``checkpoint`` (or ended): the replica's state now belongs to it."""

    checkpoint: int


_Message = tuple[Header, list[Any]]
"""A checked message (its header and payload frames), as the alignment holds it."""


class Inputs:
    """The receiving side of a replica: PULL for shuffle/by_key inputs, SUB for broadcast."""

    def __init__(self, plan: Plan, replica: ReplicaPlan, incarnation: int, token: bytes, control: ControlPipe,
                 wiring: Wiring, counters: Counters, stop_check_ms: int) -> None:
        self._plan = plan
        self._incarnation = incarnation
        self._token = token
        self._control = control
        self._wiring = wiring
        self._stop_check_ms = stop_check_ms
        self._grants = Grants(plan, replica, incarnation, token, wiring, counters)
        self.acks = Acknowledger(plan, replica, incarnation, token, wiring)
        self._incarnations: dict[Sender, int] = {}
        """Each producer's newest incarnation seen: older ones' messages are dropped (zombies)."""
        self._names = {(plan.node(edge.upstream).index, edge.port): edge.source_name
                       for edge in plan.edges_into(replica.node)}
        """What ``context().input`` says for items from (producer node, port): ``fetch``, ``fetch.errors``."""
        self._node_names = {node.index: node.name for node in plan.nodes}
        self._producers = {
            (plan.node(edge.upstream).index, index, edge.port)
            for edge in plan.edges_into(replica.node)
            for index in range(edge.producers)
        }
        self._feedback = {(plan.node(edge.upstream).index, index, edge.port)
                          for edge in plan.edges_into(replica.node) if edge.feedback for index in range(edge.producers)}
        """The producers of its feedback edges: their end of stream comes after ``finish()``."""
        self._external = {(plan.node(edge.upstream).index, index, edge.port)
                          for edge in plan.edges_into(replica.node) if edge.loop is None
                          for index in range(edge.producers)}
        """The producers from outside its loop (all of them, for a replica in no loop)."""
        self._loop_inputs = {(plan.node(edge.upstream).index, edge.port)
                             for edge in plan.edges_into(replica.node) if edge.loop is not None}
        self._replica = replica
        self.eos_expected = replica.eos_expected
        self._alignment: Alignment[_Message] = Alignment(self._producers)
        """Barrier alignment, and which producers ended."""
        self._next_seq: dict[Sender, int] = {}
        self._rejected = 0
        self._pull: zmq.Socket | None = None
        self._sub: zmq.Socket | None = None
        self._subscribed: list[ConnectPlan] = [c for c in replica.connects if c.socket == "SUB"]
        self._sockets: list[zmq.Socket] = []
        self._poller = zmq.Poller()
        self._watched = plan.node(replica.node).loop is not None
        """Waits poll the control pipe too (a loop's probes are answered at once)."""
        self._turn = 0

    @property
    def is_done(self) -> bool:
        """True once end of stream arrived from every upstream replica on every input edge (and was taken);
        for a loop's head, on every input edge but the feedback ones, and the loop drained."""
        ended = self._alignment.ended
        if self._feedback:
            return len(ended - self._feedback) >= self.eos_expected and self._control.drained
        return len(ended) >= self.eos_expected and self._alignment.idle

    @property
    def external_ended(self) -> bool:
        """End of stream came from every producer outside the replica's loop."""
        return self._external <= self._alignment.ended

    @property
    def feedback_ended(self) -> bool:
        """End of stream came on every feedback edge (after ``finish()``: the loop's nodes finished in turn)."""
        return self._feedback <= self._alignment.ended

    def bound_sockets(self) -> list[zmq.Socket]:
        """The sockets this side binds (strangers can connect to them)."""
        return [self._pull] if self._pull is not None else []

    def bind(self, context: zmq.Context) -> dict[str, str]:
        """Create the PULL and SUB sockets and bind the PULL; returns {slot: endpoint}."""
        inputs = self._plan.edges_into(self._replica.node)
        if any(bind.slot == IN_SLOT for bind in self._replica.binds):
            self._pull = self._wiring.data_socket(context, zmq.PULL, _widest(
                [edge.buffers for edge in inputs if not edge.is_pub_sub]))
            self._sockets.append(self._pull)
        if self._subscribed:
            self._sub = self._wiring.data_socket(context, zmq.SUB, _widest(
                [edge.buffers for edge in inputs if edge.is_pub_sub]))
            # Subscriptions travel SUB -> XPUB and a SUB drops them at its send HWM;
            # they are a few bytes each, so never limit them.
            self._sub.sndhwm = 0
            self._sockets.append(self._sub)
        for socket in self._sockets:
            socket.rcvtimeo = self._stop_check_ms  # only a waiting receive blocks (see _recv_waiting)
        for socket in [*self._sockets, self._control.socket]:
            self._poller.register(socket, zmq.POLLIN)
        if self._pull is None:
            return {}
        return {IN_SLOT: self._wiring.bind(self._pull, f"{self._replica.id}@{self._incarnation}/{IN_SLOT}")}

    def connect(self, context: zmq.Context, address_book: AddressBook) -> None:
        """Connect the credit sockets, and the SUB socket to every broadcasting producer and subscribe.

        The data topic is subscribed first, the identification topic after it:
        when a producer sees the identification, it has seen the data
        subscription too (they travel in order on one connection).
        """
        self._grants.connect(context, address_book)
        self.acks.connect(context, address_book)
        if self._sub is None:
            return
        for connect in self._subscribed:
            self._sub.connect(address_book[connect.peer][connect.slot])
        self._sub.setsockopt(zmq.SUBSCRIBE, topic(self._token))
        self._sub.setsockopt(zmq.SUBSCRIBE, identification(self._token, self._replica.index))

    def watch(self, sockets: list[zmq.Socket]) -> None:
        """Wake a waiting receive for these sockets too (with restarts: acknowledgements from downstream, which
        may be what a producer upstream waits for)."""
        for socket in sockets:
            self._poller.register(socket, zmq.POLLIN)
        self._watched = bool(sockets)

    def watch_fd(self, fd: int) -> None:
        """Wake a waiting receive when ``fd`` is readable too (a concurrent node's completions)."""
        self._poller.register(fd, zmq.POLLIN)
        self._watched = True

    def rewire(self, context: zmq.Context, producer_id: str, incarnation: int, endpoints: AddressBook) -> None:
        """Producer ``producer_id`` was restarted as ``incarnation``: what its replaced incarnation still sends
        is dropped from now on, credit and acknowledgements go to its new endpoints."""
        for sender in self._producers:
            if (replica_id(self._node_names[sender[0]], sender[1]) == producer_id
                    and incarnation > self._incarnations.get(sender, 0)):
                self._restarted(sender, incarnation)
        self._grants.rewire(context, producer_id, endpoints)
        self.acks.rewire(context, producer_id, endpoints)

    def receive(self) -> Batch | Barrier | None:
        """The next batch, or an aligned checkpoint's ``Barrier``, or None if none is waiting now.

        End-of-stream marks, barriers not aligned yet and rejected messages are consumed on the way.
        """
        if not self._alignment.idle:
            found = self._release()
            if found is not None:
                return found
        count = len(self._sockets)
        for _ in range(count):
            socket = self._sockets[self._turn]
            self._turn = (self._turn + 1) % count  # take turns, so no input starves another
            while ready_to_read(socket):
                found = self._found(self._accept(recv_frames(socket, zmq.NOBLOCK)))
                if found is not None:
                    return found
        return None

    def wait_receive(self, wait_ms: int) -> Batch | Barrier | None:
        """Like ``receive``, but first waits up to about ``wait_ms`` for a message; raises ``Stopped``.

        Call it when ``receive`` gave None and ``is_done`` is still False.
        """
        self._grants.retry()
        if len(self._sockets) == 1 and not self._watched:
            frames = self._recv_waiting(self._sockets[0], wait_ms)
            return None if frames is None else self._found(self._accept(frames))
        events = dict(self._poller.poll(wait_ms))
        if self._control.socket in events:
            self._control.raise_if_stopped()
        return self.receive()

    def _recv_waiting(self, socket: zmq.Socket, wait_ms: int) -> list[zmq.Frame] | None:
        """A message from ``socket``, waiting in ``recv`` itself (a poll first costs tens of µs a hop).

        The wait is cut into pieces of the socket's receive timeout (the
        run's ``stop_check_s``), between which the control pipe is checked
        for a stop request.
        """
        for _ in range(max(1, wait_ms // self._stop_check_ms)):
            try:
                return recv_frames(socket, 0)
            except zmq.Again:
                self._control.raise_if_stopped()
        return None

    def close(self) -> None:
        """Close without linger: a SUB would otherwise hold its subscriptions for closed peers."""
        for socket in self._sockets:
            socket.close(linger=0)
        self._grants.close()
        self.acks.close()

    def _accept(self, frames: Sequence[zmq.Frame]) -> Batch | None:
        header_frame, payload = split(frames)
        header = decode_header(self._token, header_frame)
        if header is None or header.sender not in self._producers or (
                header.kind in (Kind.BATCH, Kind.POISON) and not payload) or header.kind not in _DATA:
            self._reject(frames)
            return None
        producer = header.sender
        known = self._incarnations.get(producer, 0)
        if header.incarnation != known:
            if header.incarnation < known:
                return None  # from a replica since replaced: what it sent comes again from its successor
            self._restarted(producer, header.incarnation)
        expected = self._next_seq.get(producer, 0)
        upstream = self._names[header.node, header.port]
        if header.seq != expected:
            raise ProtocolError(
                f"from {upstream}/{header.replica}: expected batch #{expected}, got #{header.seq}"
            )
        self._next_seq[producer] = expected + 1
        if self._alignment.holds(producer):
            self._alignment.hold(producer, (header, payload))
            return None
        return self._deliver(header, payload)

    def _deliver(self, header: Header, payload: list[Any]) -> Batch | None:
        """Apply a checked message in its turn: the batch it carries, or None (end of stream, a barrier)."""
        producer = header.sender
        if header.kind == Kind.EOS:
            self._alignment.end(producer)
            return None
        if header.kind == Kind.BARRIER:
            try:
                self._alignment.barrier(producer, header.items)
            except AlignmentError as error:
                raise ProtocolError(f"from {self._names[header.node, header.port]}/{header.replica}: {error}") from None
            return None
        self._grants.received(producer, header.items)
        return Batch(self._names[header.node, header.port], serializers.decode_items(header.serializer, payload),
                     producer, header.incarnation, header.seq, header.kind == Kind.POISON,
                     (header.node, header.port) in self._loop_inputs)

    def _found(self, batch: Batch | None) -> Batch | Barrier | None:
        """What ``receive`` returns after taking one message: an aligned barrier first."""
        aligned = self._alignment.take_aligned()
        return batch if aligned is None else Barrier(aligned)

    def _release(self) -> Batch | Barrier | None:
        """The aligned barrier, then the messages held during the alignment, in order."""
        while True:
            found = self._found(None)
            if found is not None:
                return found
            released = self._alignment.next_released()
            if released is None:
                return None
            batch = self._deliver(*released)
            if batch is not None:
                return self._found(batch)

    def _restarted(self, producer: Sender, incarnation: int) -> None:
        """``producer`` is a new incarnation: its numbering starts again, and so does its end of stream."""
        self._incarnations[producer] = incarnation
        self._next_seq[producer] = 0
        self._alignment.ended.discard(producer)
        self.acks.arrived(producer, incarnation)
        self._grants.restarted(producer)

    def _reject(self, frames: Sequence[zmq.Frame]) -> None:
        self._rejected += 1
        if self._rejected <= 5 or self._rejected % 1000 == 0:
            first = frames[0].bytes[:40]
            log.warning(
                "%s: rejected a %d-frame message that is not from this run (first bytes %r); "
                "%d rejected so far",
                self._replica.id, len(frames), first, self._rejected,
            )


def _widest(settings: list[BufferSettings]) -> BufferSettings:
    """Settings for a socket that receives several edges: the largest queue any of them asks for."""
    widest = max(settings, key=lambda s: (s.effective_hwm, s.socket_buffer_bytes))
    return dataclasses.replace(widest, socket_buffer_bytes=max(s.socket_buffer_bytes for s in settings))
