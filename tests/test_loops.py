"""Loops through ``feedback("name")``: the DSL and the plan, the termination detection stepped by hand, real runs.

The runs use real worker processes (and ``--inproc`` threads): a loop that
doubles items to a depth limit gives exactly the expected multiset, a loop
that multiplies items under a slow node overflows its feedback edge to disk
and loses nothing, random topologies with loops give the same multisets in
every mode.
"""

from __future__ import annotations

import collections
import os
import random

import pytest

from flowgraph import RunFailed, Topology, TopologyError, broadcast, by_key, feedback, run, shuffle
from flowgraph.launch.loops import LoopWatch
from flowgraph.model.drawing import to_dot, to_mermaid
from flowgraph.model.plan import describe_plan
from flowgraph.testing import MODES, assert_same_items, run_and_collect
from flowgraph.wire.control import LoopCounts
from helpers import PeakRss

# --- the termination detection, stepped ----------------------------------------------


def _wave(watch: LoopWatch, now: float, answers: dict[str, tuple[int, int, bool]]) -> bool:
    probe = watch.probe(now)
    assert probe is not None
    drained = False
    for replica, (sent, done, quiet) in answers.items():
        drained = watch.answer(replica, LoopCounts(probe.loop, probe.wave, sent, done, quiet))
    return drained


def test_a_loop_drains_after_a_quiet_wave_and_a_wave_that_sent_what_the_first_had_done():
    watch = LoopWatch(0, frozenset({"a/0", "b/0"}))
    assert not _wave(watch, 0.0, {"a/0": (5, 3, True), "b/0": (3, 5, True)})
    assert _wave(watch, 1.0, {"a/0": (5, 3, True), "b/0": (3, 5, True)})
    assert watch.drained and watch.probe(2.0) is None


def test_a_busy_replica_or_an_item_in_transit_keeps_the_loop_running():
    watch = LoopWatch(0, frozenset({"a/0", "b/0"}))
    assert not _wave(watch, 0.0, {"a/0": (5, 3, False), "b/0": (3, 5, True)})  # a busy
    assert not _wave(watch, 1.0, {"a/0": (6, 3, True), "b/0": (3, 5, True)})  # one item in transit
    assert not _wave(watch, 2.0, {"a/0": (6, 3, True), "b/0": (3, 6, True)})  # done, but this wave confirms it
    assert _wave(watch, 3.0, {"a/0": (6, 3, True), "b/0": (3, 6, True)})


def test_one_wave_with_equal_totals_is_not_enough():
    """The counter-example to counting once: a/0 answered before it sent, b/0 after it took the item.

    The totals match (sent 4 = done 4) though an item is in flight; only the
    next wave, whose sent exceeds the first's done, shows it.
    """
    watch = LoopWatch(0, frozenset({"a/0", "b/0"}))
    assert not _wave(watch, 0.0, {"a/0": (2, 2, True), "b/0": (2, 2, True)})
    assert not _wave(watch, 1.0, {"a/0": (3, 2, True), "b/0": (2, 3, True)})
    assert _wave(watch, 2.0, {"a/0": (3, 2, True), "b/0": (2, 3, True)})


def test_an_empty_loop_drains_after_two_waves_and_late_or_strange_answers_are_ignored():
    watch = LoopWatch(3, frozenset({"a/0"}))
    probe = watch.probe(0.0)
    assert probe is not None and watch.probe(0.0) is None  # one wave at a time
    assert not watch.answer("a/0", LoopCounts(3, probe.wave + 1, 0, 0, True))
    assert not watch.answer("z/0", LoopCounts(3, probe.wave, 0, 0, True))
    assert not watch.answer("a/0", LoopCounts(3, probe.wave, 0, 0, True))
    assert watch.probe(0.001) is None  # the next wave comes after a pause
    second = watch.probe(1.0)
    assert second is not None and watch.answer("a/0", LoopCounts(3, second.wave, 0, 0, True))


# --- the DSL and the plan ------------------------------------------------------------------


def _crawl_shape(**head) -> Topology:
    topo = Topology("crawl")

    @topo.source
    def seeds():
        yield from range(3)

    topo.node(lambda n: n, inputs={seeds: shuffle(), feedback("links"): by_key(lambda n: n)}, name="frontier",
              **head)
    topo.node(lambda n: n, inputs="frontier", name="fetch", parallelism=3, concurrency=4)

    @topo.node(inputs="fetch")
    def links(n):
        if n < 10:
            yield n + 3

    @topo.sink(inputs="fetch")
    def store(n):
        pass

    return topo


def test_the_plan_names_the_loop_its_head_and_its_feedback_edge():
    plan = _crawl_shape().check()
    [loop] = plan.loops
    assert loop.nodes == ("frontier", "fetch", "links") and loop.heads == ("frontier",)
    feedback_edge = next(edge for edge in plan.edges if edge.feedback)
    assert feedback_edge.name == "links->frontier" and feedback_edge.sockets == ("PUSH", "PULL")
    assert plan.replica("frontier", 0).eos_expected == 1 and plan.replica("frontier", 0).feedback_eos == 1
    assert {edge.name for edge in plan.edges if edge.loop == 0} == {"links->frontier", "frontier->fetch",
                                                                    "fetch->links"}
    text = describe_plan(plan)
    assert "links->frontier" in text and "feedback (overflows to disk)" in text
    assert "loop 0: frontier -> fetch -> links; heads frontier finish once every source ended" in text
    assert "concurrency=4" in text
    assert '"links" -> "frontier" [label="feedback by_key(_crawl_shape.<locals>.<lambda>)\\n1→1", style=dashed' in \
        to_dot(plan)
    assert "-.->" in to_mermaid(plan) and "4 in flight" in to_mermaid(plan)


def test_a_feedback_edge_to_a_shuffle_of_several_replicas_asks_no_credit():
    plan = _crawl_shape(parallelism=2).check()
    feedback_edge = next(edge for edge in plan.edges if edge.feedback)
    assert not feedback_edge.uses_credit and not feedback_edge.has_back_channel


def test_a_cycle_without_feedback_is_refused_naming_it_and_the_fix():
    topo = Topology("cycle")

    @topo.source
    def seeds():
        yield 1

    topo.node(lambda n: n, inputs=[seeds, "b"], name="a")
    topo.node(lambda n: n, inputs="a", name="b")
    with pytest.raises(TopologyError, match=r"has a cycle: a -> b -> a; .*\(inputs=\{feedback\('b'\): \.\.\.\} of 'a'"):
        topo.check()


def test_a_feedback_edge_must_close_a_loop_and_cannot_be_a_broadcast():
    topo = Topology("open")

    @topo.source
    def seeds():
        yield 1

    topo.node(lambda n: n, inputs=seeds, name="other")
    topo.node(lambda n: n, inputs={seeds: shuffle(), feedback("other"): shuffle()}, name="head")
    with pytest.raises(TopologyError, match="node 'head' takes feedback\\('other'\\), but 'other' is not downstream"):
        topo.check()
    with pytest.raises(TopologyError, match="a broadcast cannot close a loop"):
        topo.node(lambda n: n, inputs={seeds: shuffle(), feedback("x"): broadcast()}, name="bad")
    with pytest.raises(TopologyError, match="is not declared"):
        topo2 = Topology("missing")
        topo2.source(lambda: iter([1]), name="s")
        topo2.node(lambda n: n, inputs=["s", feedback("nowhere")], name="head")
        topo2.check()


def test_loops_refuse_checkpoints_and_restarts_with_a_clear_message(tmp_path):
    topo = _crawl_shape()
    with pytest.raises(TopologyError, match=r"has a loop .*checkpoints do not cover loops yet: run it without "
                                            r"--checkpoint"):
        run(topo, checkpoint=str(tmp_path / "ck"))
    with pytest.raises(TopologyError, match="restarts do not cover loops yet"):
        run(topo, restarts=1)


# --- runs -------------------------------------------------------------------------------------


def doubling(depth: int, seeds: int = 3, parallelism: int = 2) -> Topology:
    """Each item (depth, i) comes back twice as (depth + 1, 2i) and (depth + 1, 2i + 1), to ``depth``."""
    topo = Topology("doubling")

    @topo.source
    def numbers():
        yield from ((0, i) for i in range(seeds))

    @topo.node(inputs={numbers: by_key(1), feedback("grow"): by_key(1)}, parallelism=parallelism)
    def head(item):
        return item

    @topo.node(inputs=head, parallelism=parallelism)
    def grow(item):
        level, i = item
        if level < depth:
            yield level + 1, 2 * i
            yield level + 1, 2 * i + 1

    @topo.sink(inputs=head)
    def store(item):
        pass

    return topo


def expected_doubling(depth: int, seeds: int = 3) -> list[tuple[int, int]]:
    items = [(0, i) for i in range(seeds)]
    frontier = list(items)
    for level in range(depth):
        frontier = [(level + 1, child) for _, i in frontier for child in (2 * i, 2 * i + 1)]
        items += frontier
    return items


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("depth", [0, 1, 7])
def test_a_loop_that_doubles_items_to_a_depth_limit_gives_exactly_the_expected_multiset(mode, depth):
    result = run_and_collect(doubling(depth), mode=mode)
    assert_same_items(result["store"], expected_doubling(depth))
    report = result.report
    assert report["head"].items_in == len(expected_doubling(depth))


def test_an_empty_source_still_ends_a_run_with_a_loop_and_runs_every_finish():
    topo = Topology("empty")

    @topo.source
    def nothing():
        yield from ()

    class Head:
        def process(self, item):
            return item

        def finish(self):
            yield "head finished"

    topo.node(Head, inputs={nothing: shuffle(), feedback("back"): shuffle()}, name="head")

    class Back:
        def process(self, item):
            return None

        def finish(self):
            return None

    topo.node(Back, inputs="head", name="back")

    @topo.sink(inputs="head")
    def store(item):
        pass

    assert run_and_collect(topo, mode="inproc")["store"] == ["head finished"]


def test_an_item_that_comes_back_after_the_loop_drained_fails_the_run_naming_it():
    topo = Topology("late")

    @topo.source
    def numbers():
        yield from range(3)

    topo.node(lambda n: n, inputs={numbers: shuffle(), feedback("tail"): shuffle()}, name="head")

    class Tail:
        def process(self, n):
            return None

        def finish(self):
            yield "late"

    topo.node(Tail, inputs="head", name="tail")
    with pytest.raises(RunFailed, match="items came back from 'tail' after 'head' had finished"):
        run_and_collect(topo, mode="local")


@pytest.mark.slow
def test_a_loop_that_multiplies_items_under_a_slow_head_overflows_to_disk_and_loses_nothing():
    """10 seeds, 40 children each to depth 2: 16,410 items of 16 KB (260 MB) through the feedback edge of a
    head that takes 0.1 ms an item; the feedback edge's budget is 256 KiB, so most waits on disk. The peak RSS
    of the whole run (this test's process included) stays far below what went round."""
    topo = Topology("multiply")

    @topo.source
    def seeds():
        yield from ((0, i, b"") for i in range(10))

    @topo.node(inputs={seeds: shuffle(), feedback("expand"): shuffle(memory_budget_bytes=256 * 1024)})
    def head(item):
        import time

        time.sleep(0.0001)
        return item

    @topo.node(inputs=head)
    def expand(item):
        level, i, _ = item
        if level < 2:
            for child in range(40):
                yield level + 1, i * 40 + child, bytes(16 * 1024)

    @topo.node(inputs=head)
    def label(item):
        return item[:2]

    @topo.sink(inputs=label)
    def store(item):
        pass

    with PeakRss(os.getpid()) as peak:
        result = run_and_collect(topo, mode="local")
    rows = result["store"]
    expected = [(0, i) for i in range(10)] + [(1, i) for i in range(400)] + [(2, i) for i in range(16_000)]
    assert collections.Counter(rows) == collections.Counter(expected)
    assert result.report["expand"].replicas[0].spilled > 0
    assert peak.peak < 400 * 1024 * 1024, f"peak RSS of the run {peak.peak / 2**20:.0f} MiB"


def random_loop_topology(seed: int) -> Topology:
    """A source, a head, a chain of 1-3 loop nodes (random parallelism, concurrency and groupings, one of them
    maybe a broadcast), sometimes a second feedback edge into the middle of the loop and a second source into
    its tail; a sink after the head and one after the tail. Items are (depth, value); the tail doubles them and
    sends back what is not deeper than 2."""
    rng = random.Random(seed)
    topo = Topology(f"loop-{seed}")
    count = rng.randint(0, 20)

    @topo.source(parallelism=rng.randint(1, 2))
    def seeds():
        from flowgraph import context

        me = context()
        yield from ((0, me.replica * 1000 + i) for i in range(count))

    chain = [f"l{index}" for index in range(rng.randint(1, 3))]
    tail = chain[-1]
    broadcasting = rng.randrange(len(chain) + 1)  # which forward edge broadcasts (none: len(chain))
    topo.node(_Step(0, 1), inputs={seeds: rng.choice([shuffle(), by_key(1)]),
                                   feedback(tail): rng.choice([shuffle(), by_key(1)])},
              name="head", parallelism=rng.randint(1, 3))
    upstream = "head"
    second = len(chain) > 1 and rng.random() < 0.5
    for index, name in enumerate(chain):
        inputs = {upstream: broadcast() if index == broadcasting else rng.choice([shuffle(), by_key(1)])}
        if second and index == 1:
            inputs[feedback(tail)] = by_key(1)
        if index == len(chain) - 1 and rng.random() < 0.5:
            topo.source(lambda: iter([(1, 5), (2, 7)]), name=f"side{index}")
            inputs[f"side{index}"] = shuffle()
        fan = 2 if name == tail else 1
        topo.node(_Step(index + 1, fan, deepen=name == tail), inputs=inputs, name=name,
                  parallelism=rng.randint(1, 3), concurrency=rng.choice([1, 1, 4]))
        upstream = name
    topo.sink(lambda item: None, inputs={"head": rng.choice([shuffle(), broadcast()])}, name="after_head",
              parallelism=rng.randint(1, 2))
    topo.sink(lambda item: None, inputs=tail, name="after_tail")
    return topo


class _Step:
    """(depth, value) → ``fan`` items; the tail deepens them and drops what is deeper than 2."""

    def __init__(self, salt: int, fan: int, deepen: bool = False) -> None:
        self.salt = salt
        self.fan = fan
        self.deepen = deepen

    def process(self, item):
        depth, value = item
        depth += self.deepen
        if depth > 2:
            return
        for copy in range(self.fan):
            yield depth, (value * 7 + self.salt + copy) % 100_003


@pytest.mark.parametrize("seed", range(5))
def test_random_topologies_with_loops_give_the_same_multisets_inproc_and_in_processes(seed):
    topo = random_loop_topology(seed)
    inproc = run_and_collect(topo, mode="inproc")
    local = run_and_collect(topo, mode="local")
    for sink in ("after_head", "after_tail"):
        assert_same_items(local[sink], inproc[sink])


def test_feedback_in_a_list_of_inputs_is_a_shuffle():
    topo = Topology("listed")

    @topo.source
    def numbers():
        yield from range(5)

    topo.node(lambda n: n, inputs=[numbers, feedback("down")], name="head", parallelism=2)
    topo.node(lambda n: n - 1 if n > 0 else None, inputs="head", name="down")

    @topo.sink(inputs="head")
    def store(n):
        pass

    edge = next(edge for edge in topo.check().edges if edge.feedback)
    assert str(edge.grouping) == "shuffle" and edge.name == "down->head"
    assert_same_items(run_and_collect(topo, mode="inproc")["store"],
                      [k for n in range(5) for k in range(n, -1, -1)])
