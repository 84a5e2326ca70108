"""What every run guarantees, in every mode: exactly once, order, end of stream, groupings."""

from __future__ import annotations

import collections
import itertools
import os
import select
import time

import pytest

from flowgraph import BufferSettings, Timeouts, Topology, broadcast, by_key, context, run
from flowgraph.testing import run_and_collect


def test_every_item_reaches_the_sink_exactly_once_through_shuffle(mode):
    topo = Topology("shuffle")

    @topo.source(parallelism=2)
    def numbers():
        me = context()
        yield from range(me.replica, 3000, me.parallelism)

    @topo.node(inputs=numbers, parallelism=3)
    def double(n):
        return n * 2

    @topo.sink(inputs=double, parallelism=2)
    def store(n):
        pass

    result = run_and_collect(topo, mode=mode)
    assert sorted(result["store"]) == [n * 2 for n in range(3000)]


def test_by_key_sends_every_item_of_a_key_to_one_replica(mode):
    topo = Topology("keys")

    @topo.source(parallelism=2)
    def words():
        me = context()
        for n in range(me.replica, 2000, me.parallelism):
            yield {"word": f"w{n % 37}", "n": n}

    @topo.node(inputs={words: by_key("word")}, parallelism=3)
    def tag(item):
        return (item["word"], context().replica, item["n"])

    @topo.sink(inputs=tag)
    def store(row):
        pass

    rows = run_and_collect(topo, mode=mode)["store"]
    assert sorted(n for _, _, n in rows) == list(range(2000))
    replicas_of_word = collections.defaultdict(set)
    for word, replica, _ in rows:
        replicas_of_word[word].add(replica)
    assert all(len(replicas) == 1 for replicas in replicas_of_word.values())
    assert len({r for rs in replicas_of_word.values() for r in rs}) == 3


def test_by_key_with_a_function_key(mode):
    topo = Topology("keyfn")

    @topo.source
    def numbers():
        yield from range(500)

    @topo.node(inputs={numbers: by_key(lambda n: n % 5)}, parallelism=2)
    def tag(n):
        return (n % 5, context().replica)

    @topo.sink(inputs=tag)
    def store(row):
        pass

    rows = run_and_collect(topo, mode=mode)["store"]
    assert len(rows) == 500
    assert all(len({r for k, r in rows if k == key}) == 1 for key in range(5))


def test_broadcast_delivers_every_item_to_every_replica_even_with_a_slow_one(mode):
    topo = Topology("broadcast")

    @topo.source(parallelism=2)
    def numbers():
        me = context()
        yield from range(me.replica, 600, me.parallelism)

    @topo.sink(inputs={numbers: broadcast()}, parallelism=3)
    class Store:
        def process(self, n):
            if context().replica == 0:
                time.sleep(0.001)

    result = run_and_collect(topo, mode=mode, hwm=1)
    for received in result.by_replica("Store"):
        assert sorted(received) == list(range(600))


def test_order_is_fifo_per_producer_consumer_pair(mode):
    topo = Topology("fifo")

    @topo.source(parallelism=3)
    def numbers():
        me = context()
        for seq in range(1500):
            yield (me.replica, seq)

    @topo.node(inputs=numbers, parallelism=2)
    def relay(item):
        return item

    @topo.sink(inputs=relay)
    def store(item):
        pass

    result = run_and_collect(topo, mode=mode, collect=["relay"])
    for received in result.by_replica("relay"):
        for producer in range(3):
            seqs = [seq for p, seq in received if p == producer]
            assert seqs == sorted(seqs)
    assert sum(len(r) for r in result.by_replica("relay")) == 4500


def test_a_chain_of_single_replicas_keeps_source_order(mode):
    topo = Topology("chain")

    @topo.source
    def numbers():
        yield from range(5000)

    @topo.node(inputs=numbers)
    def inc(n):
        return n + 1

    @topo.node(inputs=inc)
    def dec(n):
        yield n - 1

    @topo.sink(inputs=dec)
    def store(n):
        pass

    assert run_and_collect(topo, mode=mode)["store"] == list(range(5000))


def test_finish_runs_once_per_replica_after_all_upstream_and_its_output_follows_the_data(mode):
    topo = Topology("finish")

    @topo.source(parallelism=2)
    def a():
        me = context()
        yield from range(me.replica, 1000, me.parallelism)

    @topo.source
    def b():
        yield from range(1000, 1500)

    @topo.node(inputs=[a, b], parallelism=2)
    class Count:
        def setup(self):
            self.seen = 0

        def process(self, n):
            self.seen += 1
            return ("item", context().replica, n)

        def finish(self):
            yield ("count", context().replica, self.seen)

    @topo.sink(inputs=Count)
    def store(row):
        pass

    rows = run_and_collect(topo, mode=mode)["store"]
    counts = [row for row in rows if row[0] == "count"]
    assert sorted(r for _, r, _ in counts) == [0, 1]
    assert sum(seen for _, _, seen in counts) == 1500
    assert sorted(n for kind, _, n in rows if kind == "item") == list(range(1500))
    for _, replica, seen in counts:
        from_replica = [row for row in rows if row[1] == replica]
        assert from_replica[-1][0] == "count"
        assert len(from_replica) == seen + 1


def test_an_empty_source_still_ends_the_run_and_runs_every_finish(mode):
    topo = Topology("empty")

    @topo.source
    def nothing():
        return
        yield

    @topo.node(inputs=nothing, parallelism=3)
    class Summary:
        def process(self, item):
            return item

        def finish(self):
            return f"finished {context().replica}"

    @topo.sink(inputs=Summary, parallelism=2)
    def store(row):
        pass

    result = run_and_collect(topo, mode=mode)
    assert sorted(result["store"]) == ["finished 0", "finished 1", "finished 2"]


def test_the_last_end_of_stream_ends_a_replica_at_once():
    """A replica whose last end of stream comes while it flushes ends then, not at its next idle wake-up.

    The idle wait is made an hour long, so a missed end of stream would hang the test (its timeout fails it).
    A chain of parallel stages, run a few times, meets the race.
    """
    topo = Topology("chain-of-pairs")
    topo.source(lambda: iter(range(100)), name="ticks")
    upstream = "ticks"
    for name in ("a", "b", "c"):
        topo.node(lambda n: n, inputs=upstream, name=name, parallelism=2)
        upstream = name
    topo.sink(lambda n: None, inputs=upstream, name="end")
    for _ in range(10):
        assert run(topo, inproc=True, timeouts=Timeouts(idle_wait_s=3600))["end"].items_in == 100


def test_a_diamond_with_different_parallelism_ends_and_delivers_both_paths(mode):
    topo = Topology("diamond")

    @topo.source(parallelism=2)
    def a():
        me = context()
        yield from range(me.replica, 800, me.parallelism)

    @topo.node(inputs=a, parallelism=3)
    def b(n):
        return ("b", n)

    @topo.node(inputs={a: by_key(lambda n: n)}, parallelism=2)
    def c(n):
        return ("c", n)

    @topo.sink(inputs={b: by_key(1), c: broadcast()}, parallelism=2)
    def d(row):
        pass

    result = run_and_collect(topo, mode=mode)
    rows = result["d"]
    assert sorted(n for path, n in rows if path == "b") == list(range(800))
    assert sorted(n for path, n in rows if path == "c") == sorted(list(range(800)) * 2)


def test_fan_out_reaches_every_consumer_and_context_input_names_the_upstream(mode):
    topo = Topology("fan")

    @topo.source
    def left():
        yield from range(100)

    @topo.source
    def right():
        yield from range(100, 150)

    @topo.node(inputs=[left, right])
    def origin(n):
        return (context().input, n)

    @topo.sink(inputs=origin)
    def first(row):
        pass

    @topo.sink(inputs=origin, parallelism=2)
    def second(row):
        pass

    result = run_and_collect(topo, mode=mode)
    expected = sorted([("left", n) for n in range(100)] + [("right", n) for n in range(100, 150)])
    assert sorted(result["first"]) == expected
    assert sorted(result["second"]) == expected


def test_none_emits_nothing_and_generators_emit_many(mode):
    topo = Topology("shapes")

    @topo.source
    def numbers():
        return range(10)

    @topo.node(inputs=numbers)
    def evens(n):
        return n if n % 2 == 0 else None

    @topo.node(inputs=evens)
    def repeat(n):
        yield from [n] * 3

    @topo.sink(inputs=repeat)
    def store(n):
        pass

    assert sorted(run_and_collect(topo, mode=mode)["store"]) == sorted([0, 2, 4, 6, 8] * 3)


def test_a_50_megabyte_item_passes(mode):
    topo = Topology("large")

    @topo.source
    def blob():
        yield bytes(range(256)) * (50 * 1024 * 1024 // 256)

    @topo.node(inputs=blob)
    def size(data):
        return (len(data), data[:256] == bytes(range(256)), data[-1])

    @topo.sink(inputs=size)
    def store(row):
        pass

    assert run_and_collect(topo, mode=mode)["store"] == [(50 * 1024 * 1024, True, 255)]


def test_params_reach_every_node(mode):
    topo = Topology("params")

    @topo.source
    def numbers():
        yield from range(int(context().params["count"]))

    @topo.sink(inputs=numbers)
    def store(n):
        pass

    result = run_and_collect(topo, mode=mode, params={"count": "7"})
    assert sorted(result["store"]) == list(range(7))


def test_report_counts_items_per_node_and_replica(mode):
    topo = Topology("counted")

    @topo.source
    def numbers():
        yield from range(100)

    @topo.node(inputs=numbers, parallelism=2)
    def double(n):
        yield n
        yield n

    @topo.sink(inputs=double)
    def store(n):
        pass

    report = run(topo, inproc=mode == "inproc")
    assert report["numbers"].items_out == 100
    assert report["double"].items_in == 100 and report["double"].items_out == 200
    assert sum(r.items_in for r in report["double"].replicas) == 100
    assert report["store"].items_in == 200
    assert report.mode == mode
    assert "store" in report.summary()


def test_shuffle_sends_most_items_to_the_replica_that_keeps_up(mode):
    topo = Topology("uneven")

    @topo.source
    def numbers():
        for n in range(3000):
            yield (n, b"x" * 10_000)  # big enough that kernel socket buffers hold few of them

    @topo.node(inputs=numbers, parallelism=2)
    def work(item):
        if context().replica == 0:
            time.sleep(0.002)
        return item[0]

    @topo.sink(inputs=work)
    def store(n):
        pass

    result = run_and_collect(topo, mode=mode, collect=["work", "store"], buffers=BufferSettings(batch_items=16, hwm=1))
    slow, fast = (len(items) for items in result.by_replica("work"))
    assert slow + fast == 3000 and sorted(result["store"]) == list(range(3000))
    assert slow < 3000 // 4, (slow, fast)


def test_a_shuffle_deals_a_short_fast_stream_by_demand_with_default_settings(mode):
    """Small items that all fit the queues at once still go where the work gets done (credit, not dealing)."""
    topo = Topology("demand")
    topo.source(lambda: iter(range(2000)), name="numbers")

    @topo.node(inputs="numbers", parallelism=2)
    def work(n):
        if context().replica == 0:
            time.sleep(0.002)
        return n

    topo.sink(lambda n: None, inputs="work", name="store")
    result = run_and_collect(topo, mode=mode, collect=["work", "store"])
    slow, fast = (len(items) for items in result.by_replica("work"))
    assert slow + fast == 2000 and sorted(result["store"]) == list(range(2000))
    assert slow < 2000 // 4, (slow, fast)
    for received in result.by_replica("work"):
        assert received == sorted(received)  # FIFO per pair: parts of the one queue, in order


def test_a_shuffle_spreads_a_few_items_over_its_replicas(mode):
    """A short stream is split over the replicas that have credit, not sent whole to one."""
    topo = Topology("few")
    topo.source(lambda: iter(range(8)), name="numbers")
    topo.node(lambda n: n, inputs="numbers", name="work", parallelism=4)
    topo.sink(lambda n: None, inputs="work", name="store")
    result = run_and_collect(topo, mode=mode, collect=["work"])
    counts = [len(items) for items in result.by_replica("work")]
    assert sum(counts) == 8 and min(counts) >= 1, counts


@pytest.mark.parametrize("spells", [[10] * 5, [200_000, 10, 200_000, 10]], ids=["short", "after-busy-spells"])
def test_items_reach_the_sink_while_the_source_blocks_after_yielding_them(tmp_path, mode, spells):
    """A source that waits for input must not hold back what it yielded: partial batches go out when due.

    After a busy spell (a source that keeps flushing by itself), the flusher looks less often, but still looks.
    """
    acks = tmp_path / "acks"
    os.mkfifo(acks)
    ends = set(itertools.accumulate(spells))
    topo = Topology("blocking-source")

    @topo.source
    def events():
        fd = os.open(acks, os.O_RDWR)  # never blocks on a FIFO; the sink writes one byte per spell
        try:
            start = 0
            for end in itertools.accumulate(spells):
                yield from range(start, end)  # a short spell shares one batch
                if not select.select([fd], [], [], 30)[0]:
                    raise TimeoutError(f"items {start}..{end - 1} did not reach the sink in 30 s")
                os.read(fd, 1)
                start = end
        finally:
            os.close(fd)

    topo.node(lambda n: n, inputs=events, name="relay")

    @topo.sink(inputs="relay")
    def acknowledge(n):
        if n + 1 in ends:
            with open(acks, "w") as fifo:
                fifo.write("!")

    assert sorted(run_and_collect(topo, mode=mode)["acknowledge"]) == list(range(sum(spells)))
