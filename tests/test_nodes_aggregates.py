"""Tests of ``nodes.aggregates``: per-key counts, sums and top k, and merging what replicas emit.

Unit tests call the nodes directly; the topology tests run them in a real
run, once with threads and once with processes (``mode``), after a
``by_key`` or a ``shuffle`` edge.
"""

from __future__ import annotations

import pickle
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from flowgraph import Topology, by_key, shuffle
from flowgraph.testing import run_and_collect
from nodes.aggregates import CountByKey, MergeCounts, SumByKey, TopK, combine_counts

WORDS = ["the", "heron", "and", "the", "wren", "and", "the", "dipper", "saw", "the", "heron"]


def _run(node: Any, items: list[Any]) -> list[Any]:
    for item in items:
        assert node.process(item) is None
    return list(node.finish())


def _topology(name: str, node: Any, grouping: Any, *, parallelism: int = 3, merge: bool = False) -> Topology:
    """source ``items`` -> ``node`` as ``agg`` (``parallelism`` replicas) [-> MergeCounts ``merge``] -> sink ``got``."""
    topo = Topology(name)

    @topo.source
    def items() -> Iterator[Any]:
        yield from ()  # replaced by feed=

    last = topo.node(node, inputs={items: grouping}, parallelism=parallelism, name="agg")
    if merge:
        last = topo.node(MergeCounts(), inputs=last, name="merge")

    @topo.sink(inputs=last)
    def got(item: Any) -> None:
        pass

    return topo


# --- CountByKey -------------------------------------------------------------------


def test_count_by_key_counts_items_per_field_and_emits_pairs_sorted_by_key():
    pairs = _run(CountByKey("word"), [{"word": word} for word in WORDS])

    assert pairs == [("and", 2), ("dipper", 1), ("heron", 2), ("saw", 1), ("the", 4), ("wren", 1)]


def test_count_by_key_takes_a_tuple_index_or_a_function():
    assert _run(CountByKey(1), [("a", "x"), ("b", "y"), ("c", "x")]) == [("x", 2), ("y", 1)]
    assert _run(CountByKey(len), ["wren", "kite", "heron"]) == [(4, 2), (5, 1)]


def test_count_by_key_sorts_numbers_as_numbers():
    assert _run(CountByKey(lambda n: n), [10, 9, 10, 100]) == [(9, 1), (10, 2), (100, 1)]


def test_count_by_key_sorts_keys_that_do_not_compare_by_repr():
    assert _run(CountByKey("k"), [{"k": "a"}, {"k": None}, {"k": 2}, {"k": "a"}]) == [("a", 2), (2, 1), (None, 1)]


def test_count_by_key_emits_nothing_when_it_received_nothing():
    assert _run(CountByKey("word"), []) == []


def test_count_by_key_names_the_missing_field_and_the_item():
    expected = (
        "CountByKey found no field 'word' for its key in item {'w': 'heron'} (dict); "
        "pass key= a field the items have, or a function of the item"
    )

    with pytest.raises(ValueError, match=re.escape(expected)):
        CountByKey("word").process({"w": "heron"})


def test_count_by_key_rejects_a_key_that_cannot_be_a_dict_key():
    expected = (
        "CountByKey key of item {'tags': ['a']} is a list, which cannot be a dict key; "
        "pass key= a function that returns a str, a number or a tuple"
    )

    with pytest.raises(TypeError, match=re.escape(expected)):
        CountByKey("tags").process({"tags": ["a"]})


def test_count_by_key_rejects_a_key_that_is_neither_field_nor_function():
    expected = "CountByKey key must be a field name, an index or a function of the item, not True"

    with pytest.raises(TypeError, match=re.escape(expected)):
        CountByKey(True)


def test_count_by_key_pickles_with_its_key():
    assert pickle.loads(pickle.dumps(CountByKey("word"))).key == "word"


def test_count_by_key_after_by_key_counts_each_key_on_one_replica(mode):
    topo = _topology("count", CountByKey("word"), by_key("word"))

    got = run_and_collect(topo, mode=mode, feed={"items": [{"word": word} for word in WORDS]})["got"]

    assert sorted(got) == sorted(Counter(WORDS).items())


# --- SumByKey ---------------------------------------------------------------------


def test_sum_by_key_adds_up_the_value_per_key():
    rows = [{"host": "a", "bytes": 100}, {"host": "b", "bytes": 5}, {"host": "a", "bytes": 0.5}]

    assert _run(SumByKey("host", "bytes"), rows) == [("a", 100.5), ("b", 5)]


def test_sum_by_key_takes_functions_for_key_and_value():
    assert _run(SumByKey(lambda w: w[0], len), ["heron", "hawk", "wren"]) == [("h", 9), ("w", 4)]


def test_sum_by_key_rejects_a_value_that_is_not_a_number():
    expected = (
        "SumByKey value of item {'host': 'a', 'bytes': '100'} is a str ('100'), not a number; "
        "convert it upstream or pass value= a function that returns a number"
    )

    with pytest.raises(TypeError, match=re.escape(expected)):
        SumByKey("host", "bytes").process({"host": "a", "bytes": "100"})


def test_sum_by_key_names_a_missing_value_field():
    expected = (
        "SumByKey found no field 'size' for its value in item {'host': 'a'} (dict); "
        "pass value= a field the items have, or a function of the item"
    )

    with pytest.raises(ValueError, match=re.escape(expected)):
        SumByKey("host", "size").process({"host": "a"})


def test_sum_by_key_after_by_key_sums_each_key_on_one_replica(mode):
    rows = [{"host": f"h{n % 4}", "bytes": n} for n in range(200)]
    topo = _topology("sum", SumByKey("host", "bytes"), by_key("host"))

    got = run_and_collect(topo, mode=mode, feed={"items": rows})["got"]

    assert sorted(got) == [(f"h{h}", sum(n for n in range(200) if n % 4 == h)) for h in range(4)]


# --- TopK -------------------------------------------------------------------------


def test_top_k_emits_the_k_highest_scoring_items_best_first_once():
    pairs = [("wren", 3), ("heron", 7), ("kite", 1), ("dipper", 5)]

    assert _run(TopK(2, score=1), pairs) == [[("heron", 7), ("dipper", 5)]]


def test_top_k_breaks_ties_by_keeping_the_item_seen_first():
    items = [{"n": n, "score": score} for n, score in enumerate([1, 5, 5, 2, 5, 5])]

    assert [item["n"] for item in _run(TopK(3, score="score"), items)[0]] == [1, 2, 4]


def test_top_k_keeps_every_item_when_there_are_fewer_than_k():
    assert _run(TopK(5, score=len), ["wren", "heron"]) == [["heron", "wren"]]


def test_top_k_without_key_emits_an_empty_list_when_it_received_nothing():
    assert _run(TopK(3, score="score"), []) == [[]]


def test_top_k_with_a_key_emits_the_top_items_of_each_key_sorted_by_key():
    pages = [
        {"site": "b", "url": "b/1", "words": 10},
        {"site": "a", "url": "a/1", "words": 5},
        {"site": "a", "url": "a/2", "words": 50},
        {"site": "a", "url": "a/3", "words": 20},
    ]

    emitted = _run(TopK(2, key="site", score="words"), pages)

    assert [(site, [page["url"] for page in top]) for site, top in emitted] == [("a", ["a/2", "a/3"]), ("b", ["b/1"])]


def test_top_k_rejects_k_below_one():
    with pytest.raises(ValueError, match=re.escape("TopK needs an integer k >= 1, got 0")):
        TopK(0, score="score")


def test_top_k_names_a_missing_score_field():
    expected = (
        "TopK found no field 'score' for its score in item ('wren', 3) (tuple); "
        "pass score= a field the items have, or a function of the item"
    )

    with pytest.raises(ValueError, match=re.escape(expected)):
        TopK(1, score="score").process(("wren", 3))


def test_top_k_at_parallelism_1_emits_the_top_of_all_items(mode):
    items = [{"n": n, "score": (n * 37) % 101} for n in range(101)]
    topo = _topology("top", TopK(3, score="score"), shuffle(), parallelism=1)

    got = run_and_collect(topo, mode=mode, feed={"items": items})["got"]

    assert got == [[{"n": n, "score": score} for n, score in [(30, 100), (60, 99), (90, 98)]]]


def test_top_k_with_a_key_after_by_key_emits_the_top_of_each_key_once(mode):
    items = [{"site": f"s{n % 5}", "n": n} for n in range(100)]
    topo = _topology("top-by-key", TopK(2, key="site", score="n"), by_key("site"))

    got = run_and_collect(topo, mode=mode, feed={"items": items})["got"]

    assert sorted((site, [item["n"] for item in top]) for site, top in got) == [
        (f"s{s}", [95 + s, 90 + s]) for s in range(5)
    ]


# --- MergeCounts and combine_counts -----------------------------------------------


def test_merge_counts_adds_up_pairs_and_emits_them_by_count_then_key():
    pairs = [("wren", 1), ("heron", 2), ("the", 3), ("wren", 1), ("heron", 1), ("dipper", 2), ("the", 1)]

    assert _run(MergeCounts(), pairs) == [("the", 4), ("heron", 3), ("dipper", 2), ("wren", 2)]


def test_merge_counts_takes_pairs_as_lists_too():
    assert _run(MergeCounts(), [["wren", 1], ("wren", 2)]) == [("wren", 3)]


def test_merge_counts_rejects_an_item_that_is_not_a_pair():
    expected = "MergeCounts takes (key, count) pairs, not dict: {'wren': 1}; feed it what CountByKey or SumByKey emit"

    with pytest.raises(TypeError, match=re.escape(expected)):
        MergeCounts().process({"wren": 1})


def test_combine_counts_adds_up_pairs_by_count_then_key():
    assert combine_counts([("b", 1), ("a", 1), ("c", 2), ("b", 1)]) == [("b", 2), ("c", 2), ("a", 1)]


def test_combine_counts_rejects_an_element_that_is_not_a_pair():
    expected = ("combine_counts takes (key, count) pairs, not tuple: ('a', 1, 2); "
                "feed it what CountByKey or SumByKey emit")

    with pytest.raises(TypeError, match=re.escape(expected)):
        combine_counts([("a", 1, 2)])


def test_merge_counts_after_shuffled_count_by_key_gives_one_total_per_key(mode):
    topo = _topology("merge", CountByKey("word"), shuffle(), merge=True)

    got = run_and_collect(topo, mode=mode, feed={"items": [{"word": word} for word in WORDS * 50]})["got"]

    assert got == [("the", 200), ("and", 100), ("heron", 100), ("dipper", 50), ("saw", 50), ("wren", 50)]
