"""Validation of a whole topology as a graph, before anything starts."""

from __future__ import annotations

import networkx as nx

from ..errors import TopologyError
from ..wire.pickling import unpicklable_reason
from .dsl import ERRORS, ITEMS, NodeKind, TopologySpec


def validate(spec: TopologySpec) -> nx.DiGraph:
    """Check ``spec`` and return its graph (node attribute ``spec``; edge attributes ``grouping``, ``feedback``).

    Raises ``TopologyError`` naming the node and the problem: no nodes, an
    input that is not declared, a sink used as an input, the error stream of
    a node that does not dead-letter, a dead-lettering node whose error
    stream nobody takes, a cycle that passes through no ``feedback(...)``
    edge, a feedback edge that closes no loop, code that cannot be pickled
    for a worker.
    """
    if not spec.nodes:
        raise TopologyError(f"topology {spec.name!r} has no nodes; declare at least a source")
    graph = nx.DiGraph()
    for node in spec.nodes:
        graph.add_node(node.name, spec=node)
    declared = ", ".join(node.name for node in spec.nodes)
    for node in spec.nodes:
        for edge in node.inputs:
            if edge.upstream not in graph:
                raise TopologyError(
                    f"{node.kind.value} {node.name!r} lists input {edge.upstream!r}, which is not "
                    f"declared in topology {spec.name!r} (declared: {declared})"
                )
            upstream = graph.nodes[edge.upstream]["spec"]
            if upstream.kind is NodeKind.SINK and edge.stream == ITEMS:
                raise TopologyError(
                    f"{node.kind.value} {node.name!r} lists sink {edge.upstream!r} as input; "
                    "sinks have no outputs"
                )
            if edge.stream == ERRORS and upstream.policy.on_error != "dead_letter":
                raise TopologyError(
                    f"{node.kind.value} {node.name!r} takes {edge.upstream}.errors as input, but "
                    f"{upstream.kind.value} {edge.upstream!r} does not dead-letter; declare it with "
                    "on_error=\"dead_letter\""
                )
            graph.add_edge(edge.upstream, node.name, grouping=edge.grouping, feedback=edge.feedback)
    taken = {edge.upstream for node in spec.nodes for edge in node.inputs if edge.stream == ERRORS}
    for node in spec.nodes:
        if node.policy.on_error == "dead_letter" and node.name not in taken:
            raise TopologyError(
                f"{node.kind.value} {node.name!r} dead-letters (on_error=\"dead_letter\") but no node takes "
                f"{node.name}.errors as input; give its error stream a sink, e.g. "
                f"topo.sink(store, inputs={node.name}.errors)"
            )
    _check_cycles(spec.name, graph)
    for node in spec.nodes:
        reason = unpicklable_reason(node)
        if reason:
            raise TopologyError(f"{node.kind.value} {node.name!r} cannot be sent to a worker: {reason}")
    return graph


def _forward(graph: nx.DiGraph) -> nx.DiGraph:
    """The graph without its feedback edges: acyclic in a valid topology."""
    return nx.subgraph_view(graph, filter_edge=lambda upstream, downstream: not graph.edges[upstream, downstream][
        "feedback"])


def _check_cycles(name: str, graph: nx.DiGraph) -> None:
    """Every cycle passes through a feedback edge, and every feedback edge closes a loop."""
    forward = _forward(graph)
    try:
        cycle = nx.find_cycle(forward)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        path = " -> ".join([cycle[0][0], *(target for _, target in cycle)])
        raise TopologyError(
            f"topology {name!r} has a cycle: {path}; flowgraph runs directed acyclic graphs, and a loop "
            f"must come back through an input marked feedback(...) (inputs={{feedback({cycle[-1][0]!r}): ...}} "
            f"of {cycle[-1][1]!r})"
        )
    for upstream, downstream, is_feedback in graph.edges(data="feedback"):
        if is_feedback and not nx.has_path(forward, downstream, upstream):
            raise TopologyError(
                f"node {downstream!r} takes feedback({upstream!r}), but {upstream!r} is not downstream of "
                f"{downstream!r}: the edge closes no loop; list {upstream!r} as a plain input"
            )


def loops(graph: nx.DiGraph) -> list[set[str]]:
    """The loops of a validated graph: its strongly connected components that hold a feedback edge."""
    return [component for component in nx.strongly_connected_components(graph)
            if len(component) > 1 or any(graph.has_edge(name, name) for name in component)]


def topological_order(spec: TopologySpec) -> tuple[list[str], list[set[str]]]:
    """Validate ``spec``; its node names, upstream first (feedback edges left out), ties in declaration order,
    and its loops."""
    graph = validate(spec)
    position = {node.name: index for index, node in enumerate(spec.nodes)}
    order = list(nx.lexicographical_topological_sort(_forward(graph), key=lambda name: f"{position[name]:08d}"))
    return order, loops(graph)
