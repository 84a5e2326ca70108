"""Topologies the benchmark runs through ``flowgraph run`` (parameters come with --set)."""

import time

from flowgraph import Topology, context

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
