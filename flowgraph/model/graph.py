"""Validation of a whole topology as a graph, before anything starts."""

from __future__ import annotations

import networkx as nx

from ..errors import TopologyError
from ..wire.pickling import unpicklable_reason
from .dsl import ERRORS, ITEMS, NodeKind, TopologySpec


def validate(spec: TopologySpec) -> nx.DiGraph:
    """Check ``spec`` and return its graph (node attribute ``spec``, edge attribute ``grouping``).

    Raises ``TopologyError`` naming the node and the problem: no nodes, an
    input that is not declared, a sink used as an input, the error stream of
    a node that does not dead-letter, a dead-lettering node whose error
    stream nobody takes, a cycle, code that cannot be pickled for a worker.
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
            graph.add_edge(edge.upstream, node.name, grouping=edge.grouping)
    taken = {edge.upstream for node in spec.nodes for edge in node.inputs if edge.stream == ERRORS}
    for node in spec.nodes:
        if node.policy.on_error == "dead_letter" and node.name not in taken:
            raise TopologyError(
                f"{node.kind.value} {node.name!r} dead-letters (on_error=\"dead_letter\") but no node takes "
                f"{node.name}.errors as input; give its error stream a sink, e.g. "
                f"topo.sink(store, inputs={node.name}.errors)"
            )
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        path = " -> ".join([cycle[0][0], *(target for _, target in cycle)])
        raise TopologyError(
            f"topology {spec.name!r} has a cycle: {path}; flowgraph runs directed acyclic graphs"
        )
    for node in spec.nodes:
        reason = unpicklable_reason(node)
        if reason:
            raise TopologyError(f"{node.kind.value} {node.name!r} cannot be sent to a worker: {reason}")
    return graph


def topological_order(spec: TopologySpec) -> list[str]:
    """Validate ``spec`` and return its node names, upstream first, ties in declaration order."""
    graph = validate(spec)
    position = {node.name: index for index, node in enumerate(spec.nodes)}
    return list(nx.lexicographical_topological_sort(graph, key=lambda name: f"{position[name]:08d}"))
