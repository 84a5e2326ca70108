"""The plan is pure data: sockets, end-of-stream counts and placement, computed without starting anything."""

from __future__ import annotations

import random
import re

import pytest

from flowgraph import Topology, broadcast, by_key
from flowgraph.model.dsl import GroupingKind
from flowgraph.model.plan import BufferSettings, describe_plan, plan_run


def crawl() -> Topology:
    topo = Topology("crawl")

    @topo.source
    def urls():
        yield "u"

    @topo.node(inputs=urls, parallelism=4)
    def fetch(url):
        return {"url": url}

    @topo.node(inputs={fetch: by_key("url")}, parallelism=2)
    def analyze(page):
        return page

    @topo.sink(inputs={analyze: broadcast()}, parallelism=3)
    def store(row):
        pass

    return topo


def test_shuffle_and_by_key_edges_are_push_pull_with_a_socket_per_pair():
    plan = crawl().check()
    fetch_edge, analyze_edge, store_edge = plan.edges
    assert fetch_edge.sockets == ("PUSH", "PULL") and fetch_edge.producers == 1 and fetch_edge.consumers == 4
    assert analyze_edge.sockets == ("PUSH", "PULL")
    fetch_1 = plan.replica("fetch", 1)
    assert [(b.socket, b.slot) for b in fetch_1.binds] == [("PULL", "in")]
    assert [(c.socket, c.peer, c.slot) for c in fetch_1.connects if c.socket == "PUSH"] == [
        ("PUSH", "analyze/0", "in"), ("PUSH", "analyze/1", "in")]
    assert store_edge.sockets == ("XPUB", "SUB")


def test_a_shuffle_to_several_replicas_gets_a_credit_socket_per_producer():
    """Each producer binds a credit socket its consumers connect to; by_key, broadcast and a single replica don't."""
    plan = crawl().check()
    fetch_edge, analyze_edge, store_edge = plan.edges
    assert fetch_edge.uses_credit and not analyze_edge.uses_credit and not store_edge.uses_credit
    assert [b.slot for b in plan.replica("urls", 0).binds if b.socket == "CREDIT"] == ["credit:fetch"]
    assert [(c.peer, c.slot) for c in plan.replica("fetch", 3).connects if c.socket == "CREDIT"] == [
        ("urls/0", "credit:fetch")]
    assert all(c.socket != "CREDIT" for r in plan.replicas if r.node != "fetch" for c in r.connects)
    single = Topology("single")
    single.source(lambda: iter(()), name="one")
    single.sink(lambda item: None, inputs="one", name="two")
    single_plan = single.check()
    assert not single_plan.edges[0].uses_credit
    assert all(s.socket != "CREDIT" for r in single_plan.replicas for s in (*r.binds, *r.connects))


def test_broadcast_producers_bind_xpub_and_consumers_connect_sub_to_each():
    plan = crawl().check()
    analyze_0 = plan.replica("analyze", 0)
    assert [(b.socket, b.slot) for b in analyze_0.binds] == [("PULL", "in"), ("XPUB", "out:store")]
    store_2 = plan.replica("store", 2)
    assert store_2.binds == ()
    assert [(c.socket, c.peer, c.slot) for c in store_2.connects] == [
        ("SUB", "analyze/0", "out:store"), ("SUB", "analyze/1", "out:store")]


def test_eos_expected_counts_every_upstream_replica_of_every_input_edge():
    topo = Topology("diamond")

    @topo.source(parallelism=2)
    def a():
        yield 1

    topo.node(lambda x: x, inputs=a, name="b", parallelism=3)
    topo.node(lambda x: x, inputs={a: broadcast()}, name="c", parallelism=2)
    topo.sink(lambda x: None, inputs=["b", "c"], name="d", parallelism=2)
    plan = topo.check()
    assert {r.id: r.eos_expected for r in plan.replicas} == {
        "a/0": 0, "a/1": 0, "b/0": 2, "b/1": 2, "b/2": 2, "c/0": 2, "c/1": 2, "d/0": 5, "d/1": 5}


def test_nodes_are_in_topological_order_with_ties_in_declaration_order():
    topo = Topology("order")
    topo.sink(lambda x: None, inputs=["y", "x"], name="z")
    topo.node(lambda v: v, inputs="s", name="y")
    topo.node(lambda v: v, inputs="s", name="x")

    @topo.source(name="s")
    def s():
        yield 1

    assert [n.name for n in topo.check().nodes] == ["s", "y", "x", "z"]


def test_check_prints_replicas_edges_sockets_eos_counts_and_memory_bound():
    text = describe_plan(crawl().check())
    assert "topology 'crawl': 4 nodes, 10 replicas, 3 edges" in text
    assert "analyze->store" in text and "broadcast" in text and "XPUB->SUB" in text
    assert "eos_expected=4" in text
    assert "memory bound per producer->consumer pair: 21 batches" in text
    assert "fetch/3" in text and "PUSH->analyze/1:in" in text


def test_buffer_settings_give_the_documented_bound():
    batches, kernel_bytes, text = BufferSettings(hwm=3, batch_items=10, socket_buffer_bytes=1024).pair_bound()
    assert (batches, kernel_bytes) == (11, 4096)
    assert text == "11 batches of <= 10 items and <= max(256 KiB, one item) + 4 KiB in kernel socket buffers"


def test_replicas_spread_round_robin_over_hosts_and_pinned_nodes_stay_on_theirs():
    topo = Topology("placed")

    @topo.source(parallelism=3)
    def s():
        yield 1

    topo.sink(lambda x: None, inputs=s, name="pinned", parallelism=2, hosts=["db"])
    plan = topo.check(hosts=["h1", "h2"])
    assert [r.host for r in plan.replicas] == ["h1", "h2", "h1", "db", "db"]


def test_an_unknown_node_is_a_key_error_listing_the_nodes_of_the_plan():
    with pytest.raises(KeyError, match=re.escape(
            "no node 'parse' in the plan of topology 'crawl' (nodes: urls, fetch, analyze, store)")):
        crawl().check().node("parse")


def test_a_replica_index_beyond_the_parallelism_is_a_key_error_giving_the_node_s_indexes():
    with pytest.raises(KeyError, match=re.escape(
            "no replica 'fetch/4' in the plan of topology 'crawl' (node 'fetch' has replicas 0 to 3)")):
        crawl().check().replica("fetch", 4)


def test_a_replica_of_a_node_with_one_replica_is_a_key_error_giving_its_only_index():
    with pytest.raises(KeyError, match=re.escape(
            "no replica 'urls/1' in the plan of topology 'crawl' (node 'urls' has replica 0 only)")):
        crawl().check().replica("urls", 1)


def test_a_replica_of_an_unknown_node_is_a_key_error_listing_the_nodes_of_the_plan():
    with pytest.raises(KeyError, match=re.escape(
            "no replica 'parse/0' in the plan of topology 'crawl' "
            "(no node 'parse'; nodes: urls, fetch, analyze, store)")):
        crawl().check().replica("parse", 0)


def test_a_host_that_runs_no_replica_is_a_key_error_listing_the_hosts_of_the_plan():
    topo = Topology("placed")
    topo.source(lambda: iter(()), name="one")
    plan = topo.check(hosts=["h1", "h2"])
    with pytest.raises(KeyError, match=re.escape(
            "no host 'h2' in the plan of topology 'placed' "
            "(hosts: h1; a host that runs no replica is not in the plan)")):
        plan.host("h2")


def random_topology(rng: random.Random, size: int) -> Topology:
    topo = Topology(f"random{size}")
    names = []
    for index in range(size):
        name = f"n{index}"
        parallelism = rng.randint(1, 3)
        if index == 0 or rng.random() < 0.2:
            topo.source(lambda: iter(()), name=name, parallelism=parallelism)
        else:
            upstream = rng.sample(names, rng.randint(1, min(3, len(names))))
            groupings = [rng.choice([None, by_key(lambda x: x), broadcast()]) for _ in upstream]
            inputs = {u: g for u, g in zip(upstream, groupings, strict=True) if g is not None}
            inputs.update({u: by_key(str) for u, g in zip(upstream, groupings, strict=True) if g is None})
            topo.node(lambda x: x, inputs=inputs, name=name, parallelism=parallelism)
        names.append(name)
    return topo


@pytest.mark.parametrize("seed", range(40))
def test_random_dags_match_a_reference_model_of_sockets_and_eos(seed):
    rng = random.Random(seed)
    topo = random_topology(rng, rng.randint(1, 9))
    spec = topo.spec()
    plan = plan_run(spec)
    parallelism = {n.name: n.parallelism for n in spec.nodes}
    position = {n.name: i for i, n in enumerate(plan.nodes)}
    for node in spec.nodes:
        for edge in node.inputs:
            assert position[edge.upstream] < position[node.name]
    for replica in plan.replicas:
        node = spec.node(replica.node)
        assert replica.eos_expected == sum(parallelism[e.upstream] for e in node.inputs)
        pushes = [c for c in replica.connects if c.socket == "PUSH"]
        subs = [c for c in replica.connects if c.socket == "SUB"]
        downstream = [(n.name, e.grouping.kind) for n in spec.nodes for e in n.inputs
                      if e.upstream == replica.node]
        assert len(pushes) == sum(parallelism[name] for name, kind in downstream
                                  if kind is not GroupingKind.BROADCAST)
        assert len(subs) == sum(parallelism[e.upstream] for e in node.inputs
                                if e.grouping.kind is GroupingKind.BROADCAST)
        xpubs = [b for b in replica.binds if b.socket == "XPUB"]
        assert len(xpubs) == sum(1 for _, kind in downstream if kind is GroupingKind.BROADCAST)
        has_pull = any(e.grouping.kind is not GroupingKind.BROADCAST for e in node.inputs)
        assert any(b.socket == "PULL" for b in replica.binds) == has_pull
    assert len(plan.replicas) == sum(parallelism.values())
