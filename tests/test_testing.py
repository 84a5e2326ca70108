"""flowgraph.testing: users feed lists in place of sources and collect what reaches sinks."""

from __future__ import annotations

import re

import pytest

from flowgraph import Topology, TopologyError, by_key, context
from flowgraph.testing import ListSource, assert_same_items, run_and_collect


def word_lengths() -> Topology:
    topo = Topology("lengths")

    @topo.source
    def words():
        yield from ["the", "real", "source", "is", "slow"]

    @topo.node(inputs={words: by_key(lambda w: w)}, parallelism=2)
    def length(word):
        return (word, len(word))

    @topo.sink(inputs=length)
    def store(row):
        print("stored", row)

    return topo


def test_feed_replaces_a_source_and_collect_returns_sink_input(mode):
    result = run_and_collect(word_lengths(), feed={"words": ["a", "bb", "ccc"]}, mode=mode)
    assert sorted(result["store"]) == [("a", 1), ("bb", 2), ("ccc", 3)]
    assert list(result) == ["store"]
    assert len(result.by_replica("store")) == 1


def test_collect_can_name_any_node_and_keeps_replicas_apart(mode):
    topo = Topology("collect")

    @topo.source(parallelism=2)
    def numbers():
        yield from range(context().replica * 100, context().replica * 100 + 100)

    @topo.node(inputs={numbers: by_key(lambda n: n % 2)}, parallelism=2)
    def parity(n):
        return n

    @topo.sink(inputs=parity)
    def store(n):
        pass

    result = run_and_collect(topo, collect=["parity", "store"], mode=mode)
    assert sorted(result["parity"]) == list(range(200))
    replicas = result.by_replica("parity")
    for parity in (0, 1):
        assert sum(any(n % 2 == parity for n in replica) for replica in replicas) == 1


def test_a_list_source_splits_its_items_over_replicas(mode):
    topo = Topology("split")
    topo.source(ListSource(range(10)), name="numbers", parallelism=3)
    topo.sink(lambda n: None, inputs="numbers", name="store")
    assert sorted(run_and_collect(topo, mode=mode)["store"]) == list(range(10))


def test_feeding_something_that_is_not_a_source_is_an_error():
    with pytest.raises(TopologyError, match=re.escape(
            "cannot feed 'length': not a source of topology 'lengths' (sources: words)")):
        run_and_collect(word_lengths(), feed={"length": []}, mode="inproc")


def test_collecting_an_unknown_node_is_an_error():
    with pytest.raises(TopologyError, match=re.escape("cannot collect from 'nope': no such node")):
        run_and_collect(word_lengths(), collect=["nope"], mode="inproc")


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="mode must be one of inproc, local"):
        run_and_collect(word_lengths(), mode="cluster")


def test_assert_same_items_compares_multisets_of_unhashable_items():
    assert_same_items([{"a": [1, 2]}, {"b": {3}}], [{"b": {3}}, {"a": [1, 2]}])
    with pytest.raises(AssertionError, match=re.escape(
            "got 3 items, expected 3: missing 1 ({'n': 3}), unexpected 1 ({'n': 2})")):
        assert_same_items([{"n": 1}, {"n": 2}, {"n": 2}], [{"n": 1}, {"n": 2}, {"n": 3}])


def test_assert_same_items_in_order_names_the_first_difference():
    assert_same_items([1, 2, 3], [1, 2, 3], ordered=True)
    with pytest.raises(AssertionError, match=re.escape(
            "got 3 items, expected 3: first difference at index 1: got 3, expected 2")):
        assert_same_items([1, 3, 2], [1, 2, 3], ordered=True)
    with pytest.raises(AssertionError, match=re.escape("first difference at index 2: got nothing (too short)")):
        assert_same_items([1, 2], [1, 2, 3], ordered=True)


def test_assert_same_items_shows_only_a_few_of_many_differences():
    with pytest.raises(AssertionError, match=re.escape("missing 100 (0, 1, 2, 3, 4, ... 95 more)")):
        assert_same_items([], range(100))
