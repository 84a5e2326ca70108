"""Pictures of a topology: Graphviz DOT, Mermaid, and SVG through Graphviz's ``dot``.

Every node shows its kind and parallelism (and concurrency, when above
one), every edge its grouping and how many producer and consumer replicas
it joins. A loop's feedback edge is dashed and labelled ``feedback``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..errors import FlowgraphError
from .plan import NodePlan, Plan

FORMATS = (".dot", ".mmd", ".svg")


class DrawingError(FlowgraphError):
    """The picture cannot be made (unknown format, Graphviz missing)."""

    exit_code = 2


def to_dot(plan: Plan) -> str:
    """The topology in Graphviz DOT.

    >>> from flowgraph import Topology
    >>> topo = Topology("t")
    >>> @topo.source
    ... def a():
    ...     yield 1
    >>> topo.sink(lambda x: None, inputs=a, name="b", parallelism=2) and None
    >>> print(to_dot(topo.check()))  # doctest: +NORMALIZE_WHITESPACE
    digraph "t" {
      rankdir=LR;
      node [shape=box, style=rounded, fontname="Helvetica"];
      edge [fontname="Helvetica", fontsize=10];
      "a" [label="a\\nsource ×1"];
      "b" [label="b\\nsink ×2"];
      "a" -> "b" [label="shuffle\\n1→2"];
    }
    """
    lines = [f"digraph {_dot(plan.topology)} {{", "  rankdir=LR;",
             '  node [shape=box, style=rounded, fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];']
    for node in plan.nodes:
        label = node.name + "\\n" + _node_text(node)
        lines.append(f"  {_dot(node.name)} [label={_dot(label)}];")
    for edge in plan.edges:
        label = ("feedback " if edge.feedback else "") + f"{edge.grouping}\\n{edge.producers}→{edge.consumers}"
        style = ", style=dashed, constraint=false" if edge.feedback else ""
        lines.append(f"  {_dot(edge.upstream)} -> {_dot(edge.downstream)} [label={_dot(label)}{style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(plan: Plan) -> str:
    """The topology as a Mermaid flowchart (renders on GitHub and in many editors)."""
    ids = {node.name: f"n{index}" for index, node in enumerate(plan.nodes)}
    lines = ["flowchart LR"]
    for node in plan.nodes:
        lines.append(f'    {ids[node.name]}["{_mermaid(node.name)}<br/>{_mermaid(_node_text(node))}"]')
    for edge in plan.edges:
        label = _mermaid(("feedback " if edge.feedback else "") + f"{edge.grouping} {edge.producers}→{edge.consumers}")
        arrow = "-.->" if edge.feedback else "-->"
        lines.append(f'    {ids[edge.upstream]} {arrow}|"{label}"| {ids[edge.downstream]}')
    return "\n".join(lines) + "\n"


def to_svg(plan: Plan) -> bytes:
    """The topology as SVG, drawn by Graphviz's ``dot``; raises ``DrawingError`` without it."""
    dot = shutil.which("dot")
    if dot is None:
        raise DrawingError(
            "drawing SVG needs Graphviz's 'dot' command, which is not installed "
            "(apt-get install graphviz, dnf install graphviz or brew install graphviz); "
            "or write .dot or .mmd, which need nothing"
        )
    result = subprocess.run([dot, "-Tsvg"], input=to_dot(plan).encode(), capture_output=True, timeout=60)
    if result.returncode != 0:
        raise DrawingError(f"dot failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def draw(plan: Plan, path: str | Path) -> None:
    """Write the picture of ``plan`` to ``path``; the suffix (.dot, .mmd, .svg) picks the format."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".dot":
        path.write_text(to_dot(plan))
    elif suffix == ".mmd":
        path.write_text(to_mermaid(plan))
    elif suffix == ".svg":
        path.write_bytes(to_svg(plan))
    else:
        raise DrawingError(f"cannot draw {str(path)!r}: the file name must end in {', '.join(FORMATS)}")


def _node_text(node: NodePlan) -> str:
    """``node ×4``, or ``node ×4, 32 in flight`` for a node with concurrency."""
    text = f"{node.kind.value} ×{node.parallelism}"
    return text + (f", {node.concurrency} in flight" if node.concurrency > 1 else "")


def _dot(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\\\\n", "\\n")
    return f'"{escaped}"'


def _mermaid(text: str) -> str:
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
