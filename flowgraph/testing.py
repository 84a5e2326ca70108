"""Test your own topologies: feed lists in place of sources, collect what reaches sinks.

You only want this in tests: collected items travel back to the launcher
in memory at the end of the run.

>>> from flowgraph import Topology
>>> from flowgraph.testing import run_and_collect
>>> topo = Topology("shout")
>>> @topo.source
... def words():
...     yield from ["never", "used"]
>>> @topo.node(inputs=words)
... def upper(word):
...     return word.upper()
>>> @topo.sink(inputs=upper)
... def show(word):
...     pass
>>> result = run_and_collect(topo, feed={"words": ["a", "b"]}, mode="inproc")
>>> sorted(result["show"])
['A', 'B']
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from .errors import TopologyError
from .launch.runner import run
from .model.dsl import NodeKind, Topology, TopologySpec
from .model.report import RunReport
from .model.shapes import Shape
from .runtime.context import Context, context, current_context, set_context

__all__ = ["Collected", "ListSource", "assert_same_items", "replica_context", "run_and_collect"]

MODES = ("inproc", "local")


class ListSource:
    """A source that yields the items of a list; replica ``r`` of ``n`` yields ``items[r::n]``."""

    __test__ = False

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = list(items)

    def generate(self) -> Iterator[Any]:
        me = context()
        yield from self.items[me.replica :: me.parallelism]


@dataclasses.dataclass(frozen=True)
class Collected(Mapping[str, list[Any]]):
    """What reached the collected nodes; ``collected["store"]`` is every item the sink received.

    Items of one replica keep their arrival order; replicas follow each other
    in index order. ``by_replica("store")`` keeps them apart.
    """

    __test__ = False

    report: RunReport

    def __getitem__(self, node: str) -> list[Any]:
        return [item for replica in self.by_replica(node) for item in replica]

    def __iter__(self) -> Iterator[str]:
        return iter(self.report.collected)

    def __len__(self) -> int:
        return len(self.report.collected)

    def by_replica(self, node: str) -> list[list[Any]]:
        """The items each replica of ``node`` received, in arrival order."""
        if node not in self.report.collected:
            raise KeyError(f"{node!r} was not collected; collected: {', '.join(self.report.collected)}")
        return [list(items) for items in self.report.collected[node]]


def run_and_collect(
    topology: Topology | TopologySpec,
    *,
    feed: Mapping[str, Iterable[Any]] | None = None,
    collect: Sequence[str] | None = None,
    mode: str = "local",
    **run_options: Any,
) -> Collected:
    """Run ``topology`` and return what reached its sinks.

    ``feed`` maps source names to lists that replace those sources.
    ``collect`` names the nodes whose received items to return (default:
    every sink). ``mode`` is ``"inproc"`` (threads) or ``"local"``
    (processes). Other keywords go to ``flowgraph.run``. Raises what
    ``run`` raises.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    spec = topology.spec() if isinstance(topology, Topology) else topology
    spec = _fed(spec, feed or {})
    if collect is None:
        collect = [node.name for node in spec.nodes if node.kind is NodeKind.SINK]
    report = run(spec, inproc=mode == "inproc", collect=collect, **run_options)
    return Collected(report)


def _fed(spec: TopologySpec, feed: Mapping[str, Iterable[Any]]) -> TopologySpec:
    sources = {node.name for node in spec.nodes if node.kind is NodeKind.SOURCE}
    unknown = sorted(set(feed) - sources)
    if unknown:
        raise TopologyError(
            f"cannot feed {', '.join(map(repr, unknown))}: not a source of topology {spec.name!r} "
            f"(sources: {', '.join(sorted(sources))})"
        )
    nodes = tuple(
        dataclasses.replace(node, code=ListSource(feed[node.name]), shape=Shape.INSTANCE)
        if node.name in feed else node
        for node in spec.nodes
    )
    return TopologySpec(spec.name, nodes, spec.settings)


@contextlib.contextmanager
def replica_context(node: str = "node", replica: int = 0, parallelism: int = 1, host: str = "localhost",
                    params: Mapping[str, Any] | None = None, *, checkpointing: bool = False,
                    checkpoint: int = 0) -> Iterator[Context]:
    """Call a node's methods as replica ``replica`` of ``node`` would: ``context()`` answers with these values.

    For unit tests of a node class on its own, without a run; the previous
    context (usually none) comes back on exit.

    >>> from flowgraph import context
    >>> with replica_context("fetch", replica=1, parallelism=4, params={"db": "x.db"}):
    ...     print(context().replica, context().params["db"])
    1 x.db
    """
    previous = current_context()
    made = Context(node, replica, parallelism, host, dict(params or {}), checkpointing=checkpointing,
                   checkpoint=checkpoint)
    set_context(made)
    try:
        yield made
    finally:
        set_context(previous)


def assert_same_items(actual: Iterable[Any], expected: Iterable[Any], *, ordered: bool = False,
                      shown: int = 5) -> None:
    """Assert that ``actual`` holds the items of ``expected``: as multisets, or in order with ``ordered``.

    Items may be unhashable (dicts, lists). The ``AssertionError`` says what
    is missing and what is unexpected (up to ``shown`` of each), or where
    two sequences first differ, instead of printing both whole.

    >>> assert_same_items([{"n": 2}, {"n": 1}], [{"n": 1}, {"n": 2}])
    >>> assert_same_items([1, 2, 2], [1, 2, 3])
    Traceback (most recent call last):
    AssertionError: got 3 items, expected 3: missing 1 (3), unexpected 1 (2)
    """
    actual, expected = list(actual), list(expected)
    if ordered:
        if actual == expected:
            return
        pairs = zip(actual, expected, strict=False)
        index = next((i for i, (a, e) in enumerate(pairs) if a != e), min(len(actual), len(expected)))
        got = repr(actual[index]) if index < len(actual) else "nothing (too short)"
        wanted = repr(expected[index]) if index < len(expected) else "nothing (too long)"
        raise AssertionError(f"got {len(actual)} items, expected {len(expected)}: first difference at index "
                             f"{index}: got {got}, expected {wanted}")
    have = collections.Counter(_frozen(item) for item in actual)
    want = collections.Counter(_frozen(item) for item in expected)
    if have == want:
        return
    missing = list((want - have).elements())
    unexpected = list((have - want).elements())
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} ({_some(missing, shown)})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} ({_some(unexpected, shown)})")
    raise AssertionError(f"got {len(actual)} items, expected {len(expected)}: {', '.join(parts)}")


class _Frozen:
    """A hashable stand-in for an item, equal when the items are equal; shows as the item."""

    __slots__ = ("item", "key")

    def __init__(self, item: Any, key: Any) -> None:
        self.item = item
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Frozen) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return repr(self.item)


def _frozen(item: Any) -> _Frozen:
    return _Frozen(item, _key(item))


def _key(item: Any) -> Any:
    if isinstance(item, dict):
        return ("dict", frozenset((_key(k), _key(v)) for k, v in item.items()))
    if isinstance(item, (list, tuple)):
        return (type(item).__name__, tuple(_key(part) for part in item))
    if isinstance(item, (set, frozenset)):
        return ("set", frozenset(_key(part) for part in item))
    try:
        hash(item)
    except TypeError:
        return ("repr", repr(item))
    return item


def _some(items: list[Any], shown: int) -> str:
    text = ", ".join(repr(item) for item in items[:shown])
    return text + (f", ... {len(items) - shown} more" if len(items) > shown else "")
