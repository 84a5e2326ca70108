"""Random DAGs give the same sink multisets in --inproc and process mode (and sequences where order is defined)."""

from __future__ import annotations

import collections
import random

import pytest

from flowgraph import Topology, broadcast, by_key, context, shuffle
from flowgraph.model.dsl import NodeKind
from flowgraph.testing import assert_same_items, run_and_collect


def _source(base: int, count: int):
    def generate():
        me = context()
        for i in range(count):
            yield base + me.replica * 10_000 + i

    return generate


def _transform(salt: int, fan: int):
    def process(n):
        value = (n * 31 + salt) % 1_000_003
        if value % 5 == 0:
            return None
        if fan > 1:
            return (value + copy for copy in range(fan))
        return value

    return process


class _WithFinish:
    def __init__(self, salt: int) -> None:
        self.salt = salt

    def process(self, n):
        return (n * 17 + self.salt) % 1_000_003

    def finish(self):
        yield 50_000_000 + self.salt * 10 + context().replica


def random_dag(seed: int) -> Topology:
    """2-7 nodes, parallelism 1-3, random groupings, fan-in and fan-out, some finish()."""
    rng = random.Random(seed)
    topo = Topology(f"random-{seed}")
    names: list[str] = []
    for index in range(rng.randint(2, 7)):
        name = f"n{index}"
        parallelism = rng.randint(1, 3)
        if not names or rng.random() < 0.25:
            topo.source(_source(index * 100_000, rng.randint(0, 300)), name=name, parallelism=parallelism)
        else:
            upstream = rng.sample(names, rng.randint(1, min(3, len(names))))
            inputs = {u: rng.choice([shuffle(), by_key(lambda n: n % 7), broadcast()]) for u in upstream}
            code = _WithFinish(index) if rng.random() < 0.3 else _transform(index, rng.choice([1, 1, 2]))
            topo.node(code, inputs=inputs, name=name, parallelism=parallelism)
        names.append(name)
    consumed = {edge.upstream for node in topo.spec().nodes for edge in node.inputs}
    for name in names:
        if name not in consumed:
            topo.sink(lambda n: None, inputs={name: rng.choice([shuffle(), broadcast()])},
                      name=f"sink_{name}", parallelism=rng.randint(1, 2))
    return topo


def ordered_sinks(topo: Topology) -> set[str]:
    """Sinks whose input is a chain of single replicas from one single-replica source."""
    spec = topo.spec()

    def is_chain(name: str) -> bool:
        node = spec.node(name)
        if node.parallelism != 1:
            return False
        if node.kind is NodeKind.SOURCE:
            return True
        return len(node.inputs) == 1 and is_chain(node.inputs[0].upstream)

    return {n.name for n in spec.nodes if n.kind is NodeKind.SINK and is_chain(n.name)}


@pytest.mark.parametrize("seed", range(12))
def test_inproc_and_processes_reach_the_sinks_with_the_same_items(seed):
    topo = random_dag(seed)
    threads = run_and_collect(topo, mode="inproc")
    processes = run_and_collect(topo, mode="local")
    assert set(threads) == set(processes) and threads
    for sink in threads:
        assert_same_items(processes[sink], threads[sink])
    for sink in ordered_sinks(topo):
        assert_same_items(processes[sink], threads[sink], ordered=True)


def test_the_generator_covers_fan_in_fan_out_every_grouping_finish_and_ordered_sinks():
    kinds, fan_in, fan_out, finish, ordered = set(), False, False, False, False
    for seed in range(12):
        topo = random_dag(seed)
        spec = topo.spec()
        ordered |= bool(ordered_sinks(topo))
        outputs = collections.Counter(e.upstream for n in spec.nodes for e in n.inputs)
        fan_out |= any(count > 1 for count in outputs.values())
        fan_in |= any(len(n.inputs) > 1 for n in spec.nodes)
        kinds |= {e.grouping.kind.value for n in spec.nodes for e in n.inputs}
        finish |= any(isinstance(n.code, _WithFinish) for n in spec.nodes)
    assert kinds == {"shuffle", "by_key", "broadcast"} and fan_in and fan_out and finish and ordered


@pytest.mark.parametrize("seed", range(6))
def test_with_restarts_on_and_no_faults_the_sinks_get_the_same_items(seed):
    """Acknowledgements, kept batches and fan-out broadcast change nothing a sink sees when nothing fails."""
    topo = random_dag(seed)
    plain = run_and_collect(topo, mode="inproc")
    for mode in ("inproc", "local"):
        recovering = run_and_collect(topo, mode=mode, restarts=2)
        assert set(recovering) == set(plain)
        for sink in plain:
            assert_same_items(recovering[sink], plain[sink])
        for sink in ordered_sinks(topo):
            assert_same_items(recovering[sink], plain[sink], ordered=True)


@pytest.mark.parametrize("seed", range(6))
def test_with_checkpoints_and_no_faults_the_sinks_get_the_same_items(seed, tmp_path):
    """Barriers, alignment and snapshots change nothing a sink sees when nothing fails."""
    topo = random_dag(seed)
    plain = run_and_collect(topo, mode="inproc")
    for mode in ("inproc", "local"):
        checkpointed = run_and_collect(topo, mode=mode, checkpoint=tmp_path / mode, checkpoint_interval_s=0.05)
        assert set(checkpointed) == set(plain)
        for sink in plain:
            assert_same_items(checkpointed[sink], plain[sink])
        for sink in ordered_sinks(topo):
            assert_same_items(checkpointed[sink], plain[sink], ordered=True)
