"""Topologies the benchmark runs through ``flowgraph run`` (parameters come with --set)."""

import json
import os
import signal
import time

from flowgraph import Topology, by_key, context

small_dicts = Topology("small-dicts")


@small_dicts.source
def items():
    for n in range(int(context().params["count"])):
        yield {"id": n, "url": f"http://example.com/{n}", "score": n * 0.5}


@small_dicts.node(inputs=items)
def score(item):
    item["score"] += 1
    return item


@small_dicts.sink(inputs=score)
def drop(item):
    pass


slow_sink = Topology("slow-sink")


@slow_sink.source
def blobs():
    block = bytes(int(context().params["item_bytes"]))
    for _ in range(int(context().params["count"])):
        yield block


@slow_sink.node(inputs=blobs)
def relay(blob):
    return blob


@slow_sink.sink(inputs=relay)
def sleepy(blob):
    time.sleep(float(context().params["sleep_s"]))


six_replicas = Topology("six-replicas")


@six_replicas.source(parallelism=2)
def few():
    yield from range(100)


@six_replicas.node(inputs=few, parallelism=2)
def square(n):
    return n * n


@six_replicas.sink(inputs=square, parallelism=2)
def keep(n):
    pass


big_items = Topology("big-items")


@big_items.source
def blocks():
    block = bytes(int(context().params["size"]))
    for _ in range(int(context().params["count"])):
        yield block


@big_items.node(inputs=blocks)
def forward(block):
    return block


@big_items.sink(inputs=forward)
def discard(block):
    pass


latency = Topology("latency")


@latency.source
def stamped():
    interval = 1 / float(context().params["rate"])
    due = time.monotonic()
    for n in range(int(context().params["count"])):
        due += interval
        time.sleep(max(0.0, due - time.monotonic()))
        yield (n, time.monotonic())


@latency.node(inputs=stamped)
def passthrough(item):
    return item


@latency.sink(inputs=passthrough)
class Latencies:
    def setup(self):
        self.seconds = []

    def process(self, item):
        self.seconds.append(time.monotonic() - item[1])

    def finish(self):
        ordered = sorted(self.seconds)
        with open(context().params["out"], "w") as file:
            json.dump({"p50_ms": 1000 * ordered[len(ordered) // 2],
                       "p99_ms": 1000 * ordered[int(len(ordered) * 0.99)]}, file)


def _spin(n):
    total = 0
    for i in range(int(context().params["work"])):
        total += i * i % 7
    return n + total % 2


cpu_p1 = Topology("cpu-p1")
cpu_p1.source(lambda: iter(range(int(context().params["count"]))), name="numbers")
cpu_p1.node(_spin, inputs="numbers", name="spin", parallelism=1)
cpu_p1.sink(lambda n: None, inputs="spin", name="done")

cpu_p2 = Topology("cpu-p2")
cpu_p2.source(lambda: iter(range(int(context().params["count"]))), name="numbers")
cpu_p2.node(_spin, inputs="numbers", name="spin", parallelism=2)
cpu_p2.sink(lambda n: None, inputs="spin", name="done")


five_nodes = Topology("five-nodes")


@five_nodes.source
def ticks():
    yield from range(100)


five_nodes.node(lambda n: n, inputs=ticks, name="a", parallelism=2)
five_nodes.node(lambda n: n, inputs="a", name="b", parallelism=2)
five_nodes.node(lambda n: n, inputs="b", name="c", parallelism=2)


@five_nodes.sink(inputs="c")
class FirstItem:
    def setup(self):
        self.first = None

    def process(self, n):
        if self.first is None:
            self.first = time.time()

    def finish(self):
        with open(context().params["out"], "w") as file:
            json.dump({"first_item_at": self.first}, file)


recovery = Topology("recovery")
"""A middle replica kills itself once, half way; its next incarnation says when it processed its first item."""


@recovery.source
def steady():
    for n in range(int(context().params["count"])):
        if n % 100 == 0:
            time.sleep(0.001)
        yield n


@recovery.node(inputs=steady, parallelism=2)
class Victim:
    restartable = True

    def setup(self):
        self.first = True

    def process(self, n):
        me, out = context(), context().params["out"]
        if me.incarnation and self.first:
            with open(os.path.join(out, "restarted"), "w") as file:
                file.write(str(time.time()))
        self.first = False
        if n == int(context().params["count"]) // 2 and me.incarnation == 0:
            with open(os.path.join(out, "killed"), "w") as file:
                file.write(str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        return n


recovery.sink(lambda n: None, inputs="Victim", name="drop")


keyed_count = Topology("keyed-count")
"""The small dicts into a keyed class counter: what checkpoints cost (``--checkpoint``), and what a resume takes."""


@keyed_count.source
def counted():
    params = context().params
    pause_every = int(params.get("pause_every", 0))
    for n in range(int(params["count"])):
        if pause_every and n % pause_every == 0:
            time.sleep(0.001)
        yield {"id": n, "key": n % 1024, "score": n * 0.5}


@keyed_count.node(inputs={counted: by_key("key")}, parallelism=2)
class Tally:
    def setup(self):
        self.counts = {}
        self.first = True

    def process(self, item):
        if self.first:
            self.first = False
            out = context().params.get("out")
            if out:
                with open(os.path.join(out, f"first-{os.getpid()}"), "w") as file:
                    file.write(str(time.time()))
        self.counts[item["key"]] = self.counts.get(item["key"], 0) + 1
        return item if context().params.get("forward") else None

    def snapshot(self):
        return self.counts

    def restore(self, state):
        self.counts = state

    def finish(self):
        yield from self.counts.items()


@keyed_count.sink(inputs=Tally)
def tallied(pair):
    sleep_s = float(context().params.get("sleep_s", 0))
    if sleep_s:
        time.sleep(sleep_s)


def wide(replicas: int, layers: int = 1) -> Topology:
    """A source, ``layers`` wide nodes of ``replicas`` replicas in all, and a sink that says when its first item
    came (``out``); with ``hold``, the source ends only once that file exists (for the RSS of idle replicas).

    Two layers shuffle all to all: every replica of the first has a socket to each of the second.
    """
    topo = Topology(f"wide-{replicas}-{layers}")
    middle = replicas - 2

    @topo.source
    def numbers():
        yield from range(1000)
        hold = context().params.get("hold")
        while hold and not os.path.exists(hold):
            time.sleep(0.01)

    previous = "numbers"
    for layer in range(layers):
        share = middle // layers + (1 if layer < middle % layers else 0)
        topo.node(lambda n: n, inputs=previous, name=f"layer{layer}", parallelism=share)
        previous = f"layer{layer}"
    topo.sink(FirstSeen(), inputs=previous, name="store")
    return topo


class FirstSeen:
    """Writes when its first item came to ``params["out"]``."""

    def setup(self):
        self.first = None

    def process(self, n):
        if self.first is None:
            self.first = time.time()
            with open(context().params["out"], "w") as file:
                json.dump({"first_item_at": self.first}, file)


wide_8 = wide(8)
wide_32 = wide(32)
wide_48 = wide(48)
wide_128 = wide(128)
dense_128 = wide(128, layers=2)
