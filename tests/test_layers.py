"""The package's layers: which part imports which, what users import, and what a worker process loads."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import flowgraph
import flowgraph.testing
from flowgraph import Topology
from flowgraph.testing import run_and_collect

PACKAGE = Path(flowgraph.__file__).resolve().parent

ALLOWED = {
    # part: the flowgraph parts its modules may import (besides their own); TYPE_CHECKING imports excepted
    "model": {"errors", "settings", "wire"},  # graph.py checks that node code can be pickled (wire.pickling)
    "wire": {"errors", "settings"},
    "checkpoint": {"errors", "settings", "model", "wire"},
    "runtime": {"errors", "settings", "model", "wire", "checkpoint"},
    "launch": {"errors", "settings", "model", "wire", "runtime", "checkpoint", "_version"},
    "cli": {"errors", "settings", "model", "wire", "launch", "runtime", "_version"},
}
THIRD_PARTY = {
    "model": {"networkx"},
    "wire": {"cloudpickle", "msgpack"},
    "checkpoint": {"cloudpickle", "msgpack"},
}
"""What the pure parts may import outside the standard library: no zmq, nothing that opens a socket."""


def imports_of(path: Path) -> set[str]:
    """Absolute names of what ``path`` imports at run time (imports under ``if TYPE_CHECKING:`` left out)."""
    tree = ast.parse(path.read_text())
    package = ["flowgraph", *path.relative_to(PACKAGE).parent.parts]
    skipped = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
               and ast.unparse(branch.test) == "TYPE_CHECKING" for body in branch.body for node in ast.walk(body)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names |= {f"{module}.{alias.name}" for alias in node.names} if not node.module else {module}
    return names


def part_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "flowgraph" and len(parts) > 1 else None


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_the_parts_below_it(part):
    wrong = {}
    for path in sorted((PACKAGE / part).glob("*.py")):
        for name in imports_of(path):
            imported = part_of(name)
            if imported is not None and imported != part and imported not in ALLOWED[part]:
                wrong.setdefault(path.name, []).append(name)
    assert wrong == {}


@pytest.mark.parametrize("part", sorted(THIRD_PARTY))
def test_the_pure_parts_import_no_zeromq(part):
    standard = sys.stdlib_module_names
    found = {name.split(".")[0] for path in (PACKAGE / part).glob("*.py") for name in imports_of(path)}
    outside = {name for name in found if name != "flowgraph" and name not in standard}
    assert outside <= THIRD_PARTY[part], outside - THIRD_PARTY[part]


def test_the_package_exports_exactly_its_public_names():
    assert flowgraph.__all__ == [
        "AllocationEnded", "BufferSettings", "CheckpointError", "Context", "DeadLetter", "ErrorStream",
        "FlowgraphError", "Grouping", "Handle", "HostError", "NodeReport", "Phase", "Plan", "ReplicaReport",
        "RunFailed", "RunInterrupted", "RunReport", "Timeouts", "Topology", "TopologyError", "broadcast", "by_key",
        "context", "feedback", "run", "shuffle",
    ]
    assert all(getattr(flowgraph, name) is not None for name in flowgraph.__all__)
    assert flowgraph.testing.__all__ == ["Collected", "ListSource", "assert_same_items", "replica_context",
                                         "run_and_collect"]


def test_a_worker_process_loads_neither_networkx_nor_rich():
    topo = Topology("imports")

    @topo.source
    def loaded():
        yield sorted(name for name in ("networkx", "rich") if name in sys.modules)

    topo.sink(lambda names: None, inputs=loaded, name="store")
    assert run_and_collect(topo, mode="local")["store"] == [[]]
