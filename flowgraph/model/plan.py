"""The plan: every replica, where it runs, which sockets it binds and connects.

``plan_run(spec)`` is a pure function of the topology and the run settings;
it starts nothing and opens nothing. ``flowgraph check`` prints the plan and
tests assert on it.

Sockets per edge (ZeroMQ can't address a chosen peer of a multi-peer PUSH,
so end of stream and by_key need a socket per pair):

* shuffle and by_key edges: each consumer replica binds one PULL socket
  (slot ``in``, shared by all its shuffle/by_key inputs); each producer
  replica connects one PUSH socket to every consumer replica. by_key picks
  the consumer from the key; end of stream goes down every PUSH.
* shuffle edges to more than one consumer replica are demand-driven: each
  producer replica binds a credit socket (a PULL, slot
  ``credit:<consumer node>``, listed as ``CREDIT``) and each consumer
  replica connects a PUSH to it (``CREDIT`` too). A consumer grants its
  producers credit for about 20 ms of its measured work, and a producer
  sends a consumer no more items than it was granted, so work is not dealt
  out ahead of time: a replica on a slower core gets less (the mechanism is
  ``flowgraph.runtime.demand``).
* broadcast edges: each producer replica binds an XPUB socket (slot
  ``out:<consumer node>``) with ``XPUB_NODROP`` (a plain PUB drops at its
  high-water mark) and ``XPUB_MANUAL`` (only subscriptions carrying the run's
  token are applied, so a stranger's subscription neither receives data nor
  stalls the run); each consumer replica connects a SUB socket to every
  producer replica, and producers wait for every subscription before the
  first item (the slow-joiner problem).

Memory per (producer replica, consumer replica) pair is bounded by
``BufferSettings``: see ``BufferSettings.pair_bound``.

A loop (a strongly connected component closed by ``feedback(...)`` edges)
is a ``LoopPlan``: its nodes and its heads (the nodes a feedback edge comes
into). Feedback edges are PUSH/PULL, never demand-driven (their producer
must never wait for credit: beyond its memory budget it spills to disk),
and their end of stream is not awaited before ``finish()``: a head
finishes once the launcher found its loop drained (``runtime.loops``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import TopologyError
from ..settings import BufferSettings, size_text
from .dsl import ERRORS, ITEMS, Grouping, GroupingKind, NodeKind, NodeSpec, TopologySpec
from .hosts import LOCALHOST, Host, deal, parse_hosts
from .policy import ErrorPolicy

IN_SLOT = "in"
STREAMS = (ITEMS, ERRORS)
T = TypeVar("T")


@dataclass(frozen=True)
class NodePlan:
    """One node of the plan; ``index`` is its position in topological order."""

    name: str
    kind: NodeKind
    index: int
    parallelism: int
    policy: ErrorPolicy = field(default_factory=ErrorPolicy)
    """What it does when its code raises (``on_error=``, ``retries=``, ...)."""
    restarts: int = 0
    """How often each replica may be restarted: the node's ``restarts=``, else the run's ``--restarts``."""
    restartable: bool = True
    """Whether it may be restarted without a checkpoint (``NodeSpec.restartable``)."""
    hosts: tuple[str, ...] = ()
    """The hosts it is pinned to (``hosts=``); empty: any host of the run."""
    concurrency: int = 1
    """Items of one replica in flight at once (``concurrency=``)."""
    ordered: bool = True
    """With concurrency: outputs leave in input order."""
    loop: int | None = None
    """The index of the loop it is in (``Plan.loops``), or None."""


@dataclass(frozen=True)
class LoopPlan:
    """One loop: the nodes of a strongly connected component, and its heads (fed by its feedback edges)."""

    index: int
    nodes: tuple[str, ...]
    """In plan order."""
    heads: tuple[str, ...]
    """The nodes a feedback edge of the loop comes into: they finish once the loop drained."""


@dataclass(frozen=True)
class EdgePlan:
    """One edge: its grouping, the socket pair carrying it and how many replica pairs it has."""

    upstream: str
    downstream: str
    grouping: Grouping
    producers: int
    consumers: int
    buffers: BufferSettings = field(default_factory=BufferSettings)
    """The effective settings of this edge (defaults, topology, run, then the edge's own)."""
    stream: str = ITEMS
    """``items``, or ``errors``: the upstream's dead letters (always pickled: they carry any item)."""
    acked: bool = False
    """Consumers acknowledge what they processed and producers keep it until then (a run with restarts)."""
    feedback: bool = False
    """A loop's way back (``feedback("name")``): it never blocks its producer, and its end of stream comes
    after its consumer finished."""
    loop: int | None = None
    """The loop both its ends are in (its items count for the loop's termination), or None."""

    @property
    def sockets(self) -> tuple[str, str]:
        """(producer socket type, consumer socket type)."""
        if self.grouping.kind is GroupingKind.BROADCAST and not self.acked:
            return ("XPUB", "SUB")
        return ("PUSH", "PULL")

    @property
    def is_pub_sub(self) -> bool:
        """A broadcast over XPUB/SUB (without restarts; with them, a PUSH to each consumer replica)."""
        return self.grouping.kind is GroupingKind.BROADCAST and not self.acked

    @property
    def has_back_channel(self) -> bool:
        """Consumers talk back to producers on this edge: credit (``uses_credit``), acknowledgements (``acked``)."""
        return self.uses_credit or self.acked

    @property
    def name(self) -> str:
        """``upstream->downstream``, or ``upstream.errors->downstream`` for an error stream."""
        return f"{self.source_name}->{self.downstream}"

    @property
    def source_name(self) -> str:
        """What the consumer sees as its input (``context().input``): the upstream, or ``upstream.errors``."""
        return self.upstream if self.stream == ITEMS else f"{self.upstream}.{ERRORS}"

    @property
    def port(self) -> int:
        """Which of the upstream's streams the edge carries, as data headers say it: 0 items, 1 errors."""
        return STREAMS.index(self.stream)

    @property
    def uses_credit(self) -> bool:
        """Items go where credit was granted (a shuffle to more than one consumer replica)."""
        return self.grouping.kind is GroupingKind.SHUFFLE and self.consumers > 1 and not self.feedback


@dataclass(frozen=True)
class BindPlan:
    """A socket a replica binds; its real endpoint goes into the address book."""

    slot: str
    socket: str


@dataclass(frozen=True)
class ConnectPlan:
    """A socket a replica connects to the ``slot`` bound by replica ``peer``."""

    socket: str
    peer: str
    slot: str
    edge: str


@dataclass(frozen=True)
class ReplicaPlan:
    """One replica: its node, index, host, sockets and end-of-stream count."""

    node: str
    index: int
    kind: NodeKind
    host: str
    eos_expected: int
    """End-of-stream marks to receive (one per upstream replica per input edge but feedback edges) before
    finish()."""
    binds: tuple[BindPlan, ...]
    connects: tuple[ConnectPlan, ...]
    feedback_eos: int = 0
    """End-of-stream marks that come on feedback edges, after finish() (a loop's head)."""

    @property
    def id(self) -> str:
        return replica_id(self.node, self.index)


@dataclass(frozen=True)
class Plan:
    """Everything a run will start, as data."""

    topology: str
    nodes: tuple[NodePlan, ...]
    edges: tuple[EdgePlan, ...]
    replicas: tuple[ReplicaPlan, ...]
    hosts: tuple[Host, ...] = (Host(LOCALHOST),)
    """Every host that runs a replica, with its settings."""
    buffers: BufferSettings = field(default_factory=BufferSettings)
    spare_hosts: tuple[Host, ...] = ()
    """With restarts: hosts of the run that run no replica, where a replica whose host is lost may go."""
    checkpointing: bool = False
    """A run with ``--checkpoint``: barriers flow, and a failure rolls every replica back to a checkpoint
    (so edges are not acknowledged)."""
    loops: tuple[LoopPlan, ...] = ()

    def host_or_spare(self, name: str) -> Host:
        """The host called ``name``, among those that run replicas or the spare ones."""
        found = next((host for host in (*self.hosts, *self.spare_hosts) if host.name == name), None)
        return self._found(found, f"host {name!r}", lambda: "hosts: " + ", ".join(
            host.name for host in (*self.hosts, *self.spare_hosts)))

    def hosts_of(self, node: str) -> tuple[Host, ...]:
        """The hosts ``node`` may run on: those it is pinned to, else every host of the run."""
        named = {host.name: host for host in (*self.hosts, *self.spare_hosts)}
        pinned = self.node(node).hosts
        return tuple(named[name] for name in pinned if name in named) if pinned else tuple(named.values())

    @property
    def recoverable(self) -> bool:
        """Some replica may be restarted alone: every edge is then acknowledged (``EdgePlan.acked``).

        With checkpoints a failure rolls back every replica instead, and nothing is acknowledged.
        """
        return not self.checkpointing and any(node.restarts > 0 for node in self.nodes)

    def host(self, name: str) -> Host:
        """The host called ``name``; ``KeyError`` naming the plan's hosts if no replica runs there."""
        found = next((host for host in self.hosts if host.name == name), None)
        return self._found(found, f"host {name!r}", lambda: (
            f"hosts: {', '.join(host.name for host in self.hosts)}; a host that runs no replica is not in the plan"))

    @property
    def is_local(self) -> bool:
        """True when every replica runs on this machine."""
        return all(host.is_local for host in self.hosts)

    def node(self, name: str) -> NodePlan:
        """The node called ``name``; ``KeyError`` naming the plan's nodes if there is none."""
        found = next((node for node in self.nodes if node.name == name), None)
        return self._found(found, f"node {name!r}", lambda: f"nodes: {self._node_names()}")

    def replica(self, node: str, index: int) -> ReplicaPlan:
        """Replica ``index`` of ``node``; ``KeyError`` naming the node's replicas (or the nodes) if there is none."""
        found = next((r for r in self.replicas if r.node == node and r.index == index), None)

        def known() -> str:
            indexes = sorted(replica.index for replica in self.replicas if replica.node == node)
            if not indexes:
                return f"no node {node!r}; nodes: {self._node_names()}"
            if len(indexes) == 1:
                return f"node {node!r} has replica {indexes[0]} only"
            return f"node {node!r} has replicas {indexes[0]} to {indexes[-1]}"

        return self._found(found, f"replica {replica_id(node, index)!r}", known)

    def replica_by_id(self, replica_id: str) -> ReplicaPlan:
        """The replica called ``replica_id`` (``node/index``); ``KeyError`` as ``replica`` says."""
        node, _, index = replica_id.rpartition("/")
        return self.replica(node, int(index))

    def _found(self, found: T | None, what: str, known: Callable[[], str]) -> T:
        """``found``, or ``KeyError`` saying ``what`` is not in the plan and what is (``known``)."""
        if found is None:
            raise KeyError(f"no {what} in the plan of topology {self.topology!r} ({known()})")
        return found

    def _node_names(self) -> str:
        return ", ".join(node.name for node in self.nodes)

    def edges_from(self, node: str) -> tuple[EdgePlan, ...]:
        return tuple(edge for edge in self.edges if edge.upstream == node)

    def edges_into(self, node: str) -> tuple[EdgePlan, ...]:
        return tuple(edge for edge in self.edges if edge.downstream == node)


def replica_id(node: str, index: int) -> str:
    """The name of a replica as shown to users: ``node/index``."""
    return f"{node}/{index}"


def plan_run(
    spec: TopologySpec,
    hosts: str | Iterable[str] | Iterable[Host] | None = None,
    buffers: BufferSettings | None = None,
    hwm: int | None = None,
    restarts: int = 0,
    checkpointing: bool = False,
) -> Plan:
    """Validate ``spec`` and compute its plan; raises ``TopologyError`` (or ``HostError``).

    Settings: ``buffers`` (the run's) replace the topology's; ``hwm``
    overrides the high-water mark; an edge's own settings win over both.
    ``restarts`` is the run's restart budget per replica (a node's
    ``restarts=`` wins); with any budget, every edge is acknowledged, unless
    ``checkpointing`` (a failure then rolls back every replica to a checkpoint).

    Placement: the replicas of nodes without ``hosts=`` are dealt round
    robin, in plan order, over ``hosts`` (default: this machine; a host with
    ``slots=N`` takes N turns). A node pinned with ``hosts=`` deals its
    replicas over those hosts.
    """
    from .graph import topological_order  # networkx: not needed by workers, which unpickle plans

    order, components = topological_order(spec)
    position = {name: index for index, name in enumerate(order)}
    loop_of = {name: index for index, component in enumerate(sorted(components, key=lambda c: min(
        position[name] for name in c))) for name in component}
    run_hosts = _hosts(hosts) if hosts else (Host(LOCALHOST),)
    nodes = tuple(_node(spec.node(name), index, restarts, loop_of.get(name)) for index, name in enumerate(order))
    restartable = any(node.restarts > 0 for node in nodes)
    if components:
        _check_loops_supported(spec, loop_of, restartable, checkpointing)
    acked = restartable and not checkpointing
    parallelism = {node.name: node.parallelism for node in nodes}
    base = buffers or BufferSettings().with_overrides(dict(spec.settings))
    if hwm is not None:
        base = base.with_overrides({"hwm": hwm})
    edges = tuple(
        EdgePlan(edge.upstream, name, edge.grouping, parallelism[edge.upstream], parallelism[name],
                 _edge_buffers(base, edge.grouping.settings, edge.stream), edge.stream, acked, edge.feedback,
                 loop_of.get(name) if loop_of.get(name) == loop_of.get(edge.upstream, -1) else None)
        for name in order
        for edge in spec.node(name).inputs
    )
    loops = tuple(
        LoopPlan(index, tuple(node.name for node in nodes if node.loop == index),
                 tuple(dict.fromkeys(edge.downstream for edge in edges if edge.feedback and edge.loop == index)))
        for index in range(len(components))
    )
    replicas = []
    dealt = 0
    for node in nodes:
        pinned = spec.node(node.name).hosts
        if pinned:
            placed = deal(tuple(_pinned(name, run_hosts) for name in pinned), node.parallelism)
        else:
            placed = deal(run_hosts, node.parallelism, start=dealt)
            dealt += node.parallelism
        replicas += [_replica(node, index, edges, parallelism, placed[index].name)
                     for index in range(node.parallelism)]
    used = {replica.host for replica in replicas}
    every_host = {host.name: host for host in [*run_hosts, *(_pinned(name, run_hosts) for node in spec.nodes
                                                           for name in node.hosts)]}
    spares = tuple(host for name, host in every_host.items() if name not in used) if restartable else ()
    return Plan(spec.name, nodes, edges, tuple(replicas),
                tuple(host for name, host in every_host.items() if name in used), base, spares, checkpointing,
                loops)


def _node(spec: NodeSpec, index: int, restarts: int, loop: int | None) -> NodePlan:
    budget = spec.policy.restarts if spec.policy.restarts is not None else restarts
    return NodePlan(spec.name, spec.kind, index, spec.parallelism, spec.policy, budget, spec.restartable, spec.hosts,
                    spec.concurrency, spec.ordered, loop)


def _check_loops_supported(spec: TopologySpec, loop_of: dict[str, int], restarts: bool, checkpointing: bool) -> None:
    """A topology with a loop runs without restarts and checkpoints: a replayed or rolled-back item would be
    counted twice by the loop's termination detection, and a barrier cannot align around a cycle."""
    looped = ", ".join(repr(name) for name in loop_of)
    if checkpointing:
        raise TopologyError(f"topology {spec.name!r} has a loop (nodes {looped}); checkpoints do not cover "
                            "loops yet: run it without --checkpoint (docs/checkpoints.md)")
    if restarts:
        raise TopologyError(f"topology {spec.name!r} has a loop (nodes {looped}); restarts do not cover loops "
                            "yet: run it without --restarts and restarts= (docs/dsl.md, Loops)")


def _edge_buffers(base: BufferSettings, own: tuple[tuple[str, object], ...], stream: str) -> BufferSettings:
    """An edge's settings: the run's, then its own; an error stream is always pickled (a dead letter holds any item)."""
    buffers = base.with_overrides(dict(own))
    return buffers if stream == ITEMS else buffers.with_overrides({"serializer": "pickle"})


def _hosts(hosts: str | Iterable[str] | Iterable[Host]) -> tuple[Host, ...]:
    if isinstance(hosts, str):
        return parse_hosts(hosts)
    given = list(hosts)
    if all(isinstance(host, Host) for host in given):
        return tuple(given)  # type: ignore[arg-type]
    return parse_hosts([str(host) for host in given])


def _pinned(name: str, run_hosts: tuple[Host, ...]) -> Host:
    """A host named by ``hosts=``: the run's host of that name (with its settings), else a new one."""
    return next((host for host in run_hosts if host.name == name), None) or parse_hosts([name])[0]


def _replica(
    node: NodePlan,
    index: int,
    edges: Sequence[EdgePlan],
    parallelism: dict[str, int],
    host: str,
) -> ReplicaPlan:
    inputs = [edge for edge in edges if edge.downstream == node.name]
    outputs = [edge for edge in edges if edge.upstream == node.name]
    binds = []
    if any(not edge.is_pub_sub for edge in inputs):
        binds.append(BindPlan(IN_SLOT, "PULL"))
    binds += [BindPlan(broadcast_slot(edge), "XPUB") for edge in outputs if edge.is_pub_sub]
    binds += [BindPlan(back_slot(edge), _back_socket(edge)) for edge in outputs if edge.has_back_channel]
    connects = []
    for edge in outputs:
        if not edge.is_pub_sub:
            connects += [ConnectPlan("PUSH", replica_id(edge.downstream, peer), IN_SLOT, edge.name)
                         for peer in range(edge.consumers)]
    for edge in inputs:
        if edge.is_pub_sub:
            connects += [ConnectPlan("SUB", replica_id(edge.upstream, peer), broadcast_slot(edge), edge.name)
                         for peer in range(edge.producers)]
        if edge.has_back_channel:
            connects += [ConnectPlan(_back_socket(edge), replica_id(edge.upstream, peer), back_slot(edge), edge.name)
                         for peer in range(edge.producers)]
    return ReplicaPlan(
        node=node.name,
        index=index,
        kind=node.kind,
        host=host,
        eos_expected=sum(parallelism[edge.upstream] for edge in inputs if not edge.feedback),
        binds=tuple(binds),
        connects=tuple(connects),
        feedback_eos=sum(parallelism[edge.upstream] for edge in inputs if edge.feedback),
    )


def _restarts(node: NodePlan) -> str:
    if not node.restarts:
        return ""
    return f"restarts={node.restarts}" + ("" if node.restartable else " (not restartable: keeps state)")


def _concurrency(node: NodePlan) -> str:
    if node.concurrency == 1:
        return ""
    return f"concurrency={node.concurrency}" + ("" if node.ordered else " (unordered)")


def broadcast_slot(edge: EdgePlan) -> str:
    """The slot name of the XPUB socket a producer binds for broadcast ``edge``: ``out:<downstream>``."""
    return f"out:{_edge_slot(edge)}"


def back_slot(edge: EdgePlan) -> str:
    """The slot of the socket a producer binds for what consumers send back on ``edge``.

    ``credit:<downstream>`` for the credit of a demand-driven shuffle;
    ``back:<downstream>`` in a run with restarts, where it carries the
    acknowledgements of every edge (and the credit of a shuffle).
    """
    return f"{'back' if edge.acked else 'credit'}:{_edge_slot(edge)}"


def _back_socket(edge: EdgePlan) -> str:
    """How ``flowgraph check`` lists the back channel: ``CREDIT`` or ``BACK``."""
    return "BACK" if edge.acked else "CREDIT"


def _edge_slot(edge: EdgePlan) -> str:
    return edge.downstream if edge.stream == ITEMS else f"{edge.downstream}.{ERRORS}"


def describe_plan(plan: Plan) -> str:
    """The plan as text, as ``flowgraph check`` prints it."""
    replica_count = len(plan.replicas)
    lines = [
        f"topology {plan.topology!r}: {len(plan.nodes)} nodes, {replica_count} replicas, "
        f"{len(plan.edges)} edges",
        "",
        "nodes (topological order):",
    ]
    for node in plan.nodes:
        hosts = sorted({r.host for r in plan.replicas if r.node == node.name})
        eos = plan.replica(node.name, 0).eos_expected
        policy = " ".join(filter(None, [node.policy.describe(), _restarts(node), _concurrency(node)]))
        lines.append(
            f"  {node.name:<20} {node.kind.value:<6} parallelism={node.parallelism}  "
            f"eos_expected={eos}  hosts={','.join(hosts)}" + (f"  {policy}" if policy else "")
        )
    lines += ["", "edges:"]
    for edge in plan.edges:
        producer, consumer = edge.sockets
        own = {name: value for name, value in vars(edge.buffers).items() if value != vars(plan.buffers)[name]}
        lines.append(
            f"  {edge.name:<30} {edge.grouping!s:<18} {producer}->{consumer}  "
            f"{edge.producers}x{edge.consumers} pairs"
            + (f"  [{', '.join(f'{name}={value!r}' for name, value in own.items())}]" if own else "")
            + ("  feedback (overflows to disk)" if edge.feedback else "")
        )
    for loop in plan.loops:
        lines += ["", f"loop {loop.index}: {' -> '.join(loop.nodes)}; heads {', '.join(loop.heads)} finish once "
                      "every source ended and nothing is in flight in the loop"]
    buffers = plan.buffers
    _, _, bound = buffers.pair_bound()
    lines += [
        "",
        f"buffers: batch <= {buffers.batch_items} items / {size_text(buffers.batch_bytes)}, "
        f"hwm={buffers.effective_hwm} batches per socket, serializer={buffers.serializer}",
        f"  memory bound per producer->consumer pair: {bound}",
        *([f"  with restarts, each producer also keeps up to {buffers.kept_batches} unacknowledged batches "
           "per consumer replica (the same batches, while they travel and until they are acknowledged)"]
          if plan.recoverable else []),
        "",
        "sockets:",
    ]
    for replica in plan.replicas:
        parts = [f"bind {b.socket} {b.slot}" for b in replica.binds]
        parts += [f"{c.socket}->{c.peer}:{c.slot}" for c in replica.connects]
        lines.append(f"  {replica.id:<24} @{replica.host}: {'; '.join(parts) or '-'}")
    return "\n".join(lines)
