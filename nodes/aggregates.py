"""Per-key aggregates: ``CountByKey``, ``SumByKey``, ``TopK``, and ``MergeCounts`` to combine replicas.

These nodes keep their state in memory and emit their results at
``finish()``, once end of stream came from every upstream replica. Each
replica aggregates only the items it receives, so send items to them with
``by_key`` on the same key: then every key lives on exactly one replica and
its result is complete::

    counts = topo.node(CountByKey("word"), inputs={words: by_key("word")}, parallelism=4, name="count")

With ``shuffle()`` instead, one key may be counted on several replicas and
comes out several times; a ``MergeCounts`` node at parallelism 1 after them
adds those partial results up (and orders them by count).

A key or value is taken from an item by a field (``item["word"]`` for a
dict, ``item[0]`` for a tuple) or by a function of the item, as ``by_key``
does. Results are emitted in a fixed order, so a run gives the same output
every time: sorted by key, or by ``repr(key)`` when the keys are of types
that do not compare with each other (``str`` and ``None``, say).
"""

from __future__ import annotations

import heapq
import numbers
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

Field = str | int | Callable[[Any], Any]
"""How to take a key, value or score from an item: a dict key, a tuple index, or a function."""


class CountByKey:
    """A node that counts items per key and emits ``(key, count)`` pairs at ``finish()``.

    ``key`` is a field name, an index or a function of the item. The pairs
    come sorted by key. Send items here with ``by_key`` on the same key (see
    the module docstring).

    >>> count = CountByKey("word")
    >>> for word in ["heron", "wren", "heron"]:
    ...     count.process({"word": word})
    >>> list(count.finish())
    [('heron', 2), ('wren', 1)]
    """

    def __init__(self, key: Field) -> None:
        self.key = _checked_field("CountByKey", "key", key)
        self._counts: dict[Hashable, int] = {}

    def process(self, item: Any) -> None:
        """Count ``item`` under its key."""
        key = _key_of("CountByKey", self.key, item)
        self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self) -> dict[Hashable, int]:
        """Its counts by key: with ``--checkpoint``, a ``--resume`` with another parallelism splits them by key."""
        return dict(self._counts)

    def restore(self, state: dict[Hashable, int]) -> None:
        self._counts = dict(state)

    def finish(self) -> Iterator[tuple[Hashable, int]]:
        """Yield ``(key, count)`` for every key seen, sorted by key."""
        for key in _in_key_order(self._counts):
            yield key, self._counts[key]


class SumByKey:
    """A node that adds up a number per key and emits ``(key, total)`` pairs at ``finish()``.

    ``key`` and ``value`` are field names, indexes or functions of the item;
    ``value`` must give a number (a bool counts as 0 or 1). The pairs come
    sorted by key. Send items here with ``by_key`` on the same key (see the
    module docstring).

    >>> total = SumByKey("host", "bytes")
    >>> for host, size in [("a.test", 100), ("b.test", 5), ("a.test", 20)]:
    ...     total.process({"host": host, "bytes": size})
    >>> list(total.finish())
    [('a.test', 120), ('b.test', 5)]
    """

    def __init__(self, key: Field, value: Field) -> None:
        self.key = _checked_field("SumByKey", "key", key)
        self.value = _checked_field("SumByKey", "value", value)
        self._totals: dict[Hashable, Any] = {}

    def process(self, item: Any) -> None:
        """Add the value of ``item`` to the total of its key; ``TypeError`` if it is not a number."""
        key = _key_of("SumByKey", self.key, item)
        value = _field_of("SumByKey", "value", self.value, item)
        if not isinstance(value, numbers.Number):
            raise TypeError(
                f"SumByKey value of item {item!r:.200} is a {type(value).__name__} ({value!r:.100}), not a number; "
                "convert it upstream or pass value= a function that returns a number"
            )
        self._totals[key] = self._totals.get(key, 0) + value

    def snapshot(self) -> dict[Hashable, Any]:
        """Its totals by key: with ``--checkpoint``, a ``--resume`` with another parallelism splits them by key."""
        return dict(self._totals)

    def restore(self, state: dict[Hashable, Any]) -> None:
        self._totals = dict(state)

    def finish(self) -> Iterator[tuple[Hashable, Any]]:
        """Yield ``(key, total)`` for every key seen, sorted by key."""
        for key in _in_key_order(self._totals):
            yield key, self._totals[key]


class TopK:
    """A node that keeps the ``k`` items with the highest score and emits them at ``finish()``.

    ``score`` is a field name, an index or a function of the item; scores
    must compare with each other. Of items with the same score, the one seen
    first wins. The items are emitted best first, as a list.

    - ``key=None``: one list of the top ``k`` items of all the items this
      replica received, emitted once per replica (an empty list when it
      received none). Each replica sees only its share, so run this node at
      parallelism 1, or combine the lists downstream (e.g. a second
      ``TopK`` at parallelism 1 after a node that yields the items of each
      list).
    - ``key`` a field name, index or function: the top ``k`` per key,
      emitted as ``(key, [item, ...])`` pairs sorted by key. Send items here
      with ``by_key`` on the same key (see the module docstring).

    Memory holds at most ``k`` items per key.

    >>> top = TopK(2, score=1)
    >>> for pair in [("wren", 3), ("heron", 7), ("dipper", 3), ("kite", 1)]:
    ...     top.process(pair)
    >>> list(top.finish())
    [[('heron', 7), ('wren', 3)]]
    """

    def __init__(self, k: int, *, key: Field | None = None, score: Field) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"TopK needs an integer k >= 1, got {k!r}")
        self.k = k
        self.key = None if key is None else _checked_field("TopK", "key", key)
        self.score = _checked_field("TopK", "score", score)
        # Per key, a min-heap of (score, -arrival, item): the weakest item is
        # at the top, and of equal scores the later one, so it goes first.
        # Arrival numbers are unique, so items themselves are never compared.
        self._heaps: dict[Hashable, list[tuple[Any, int, Any]]] = {}
        self._arrivals = 0

    def process(self, item: Any) -> None:
        """Keep ``item`` if it is among the ``k`` best so far (of its key)."""
        group = None if self.key is None else _key_of("TopK", self.key, item)
        entry = (_field_of("TopK", "score", self.score, item), -self._arrivals, item)
        self._arrivals += 1
        heap = self._heaps.setdefault(group, [])
        if len(heap) < self.k:
            heapq.heappush(heap, entry)
        elif entry[:2] > heap[0][:2]:
            heapq.heapreplace(heap, entry)

    def finish(self) -> Iterator[list[Any] | tuple[Hashable, list[Any]]]:
        """Yield the list of top items, or ``(key, list)`` per key when ``key`` is given."""
        if self.key is None:
            yield _best_first(self._heaps.get(None, []))
            return
        for group in _in_key_order(self._heaps):
            yield group, _best_first(self._heaps[group])


class MergeCounts:
    """A node that adds up ``(key, count)`` pairs from several replicas; emits them by count at ``finish()``.

    Put it at parallelism 1 after ``CountByKey`` or ``SumByKey`` (with any
    grouping) to get one total per key. It emits ``(key, total)`` pairs,
    highest total first, equal totals by key. ``combine_counts`` does the
    same on a list.

    >>> from flowgraph import Topology
    >>> topo = Topology("words")
    >>> @topo.source
    ... def words():
    ...     yield from [{"word": "heron"}, {"word": "wren"}, {"word": "heron"}]
    >>> counts = topo.node(CountByKey("word"), inputs=words, parallelism=3, name="count")  # shuffled
    >>> merged = topo.node(MergeCounts(), inputs=counts, name="merge")
    """

    def __init__(self) -> None:
        self._totals: dict[Hashable, Any] = {}

    def process(self, pair: tuple[Hashable, Any]) -> None:
        """Add ``count`` to the total of ``key``; ``TypeError`` for an item that is not such a pair."""
        _add_pair("MergeCounts", self._totals, pair)

    def finish(self) -> Iterator[tuple[Hashable, Any]]:
        """Yield ``(key, total)`` pairs, highest total first, equal totals by key."""
        yield from _by_total(self._totals)


def combine_counts(pairs: Iterable[tuple[Hashable, Any]]) -> list[tuple[Hashable, Any]]:
    """Add up ``(key, count)`` pairs per key; highest total first, equal totals by key.

    Use it on what several replicas of ``CountByKey`` emitted, e.g. in a test
    or after ``run_and_collect``. Raises ``TypeError`` for an element that
    is not a ``(key, count)`` pair.

    >>> combine_counts([("wren", 1), ("heron", 2), ("wren", 1), ("dipper", 2)])
    [('dipper', 2), ('heron', 2), ('wren', 2)]
    """
    totals: dict[Hashable, Any] = {}
    for pair in pairs:
        _add_pair("combine_counts", totals, pair)
    return list(_by_total(totals))


def _checked_field(node: str, role: str, field: Field) -> Field:
    if isinstance(field, bool) or not (isinstance(field, (str, int)) or callable(field)):
        raise TypeError(
            f"{node} {role} must be a field name, an index or a function of the item, not {field!r:.200}"
        )
    return field


def _field_of(node: str, role: str, field: Field, item: Any) -> Any:
    if callable(field):
        return field(item)
    try:
        return item[field]
    except (KeyError, IndexError, TypeError):
        raise ValueError(
            f"{node} found no field {field!r} for its {role} in item {item!r:.200} ({type(item).__name__}); "
            f"pass {role}= a field the items have, or a function of the item"
        ) from None


def _key_of(node: str, field: Field, item: Any) -> Hashable:
    key: Hashable = _field_of(node, "key", field, item)
    try:
        hash(key)
    except TypeError:
        raise TypeError(
            f"{node} key of item {item!r:.200} is a {type(key).__name__}, which cannot be a dict key; "
            "pass key= a function that returns a str, a number or a tuple"
        ) from None
    return key


def _add_pair(node: str, totals: dict[Hashable, Any], pair: Any) -> None:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise TypeError(
            f"{node} takes (key, count) pairs, not {type(pair).__name__}: {pair!r:.200}; "
            "feed it what CountByKey or SumByKey emit"
        )
    key, count = pair
    totals[key] = totals.get(key, 0) + count


def _in_key_order(keys: Iterable[Hashable]) -> list[Hashable]:
    """The keys sorted, or sorted by ``repr`` when some do not compare (``"a" < None`` fails)."""
    keys = list(keys)
    try:
        return sorted(keys)  # type: ignore[type-var]
    except TypeError:
        return sorted(keys, key=repr)


def _by_total(totals: dict[Hashable, Any]) -> Iterator[tuple[Hashable, Any]]:
    ordered = _in_key_order(totals)
    ordered.sort(key=totals.__getitem__, reverse=True)  # stable: equal totals stay in key order
    return ((key, totals[key]) for key in ordered)


def _best_first(heap: list[tuple[Any, int, Any]]) -> list[Any]:
    return [item for _score, _arrival, item in sorted(heap, reverse=True)]
