"""The launcher's checkpoint bookkeeping (``flowgraph.launch.checkpoints``), stepped with a clock of its own."""

from __future__ import annotations

from flowgraph import Topology, by_key
from flowgraph.checkpoint.store import CheckpointStore, Part
from flowgraph.launch.checkpoints import Checkpointer
from flowgraph.model.plan import plan_run


def plan():
    topo = Topology("steps")

    @topo.source(parallelism=2)
    def numbers():
        yield from range(3)

    @topo.node(inputs={numbers: by_key(lambda n: n)})
    class Count:
        def process(self, n):
            return n

    topo.sink(lambda n: None, inputs=Count, name="store")
    return plan_run(topo.spec(), checkpointing=True)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


REPLICAS = ["numbers/0", "numbers/1", "Count/0", "store/0"]


def part(replica: str, finished: bool = False) -> Part:
    return Part(replica, None, 7, finished)


def test_a_checkpoint_is_due_each_interval_after_the_last_and_completes_with_every_part(tmp_path):
    clock = Clock()
    checkpointer = Checkpointer(CheckpointStore(tmp_path), plan(), {"topology": "steps"}, 1.0, clock)
    assert checkpointer.due() is None
    clock.now += 1.0
    assert checkpointer.due() == (1, frozenset({"numbers/0", "numbers/1"}))
    assert checkpointer.due() is None  # never two at once
    for replica in REPLICAS[:-1]:
        assert checkpointer.stored(replica, 1, part(replica), final=False) is None
    clock.now += 0.25
    assert checkpointer.stored("store/0", 1, part("store/0"), final=False) == 1
    assert checkpointer.durations_s == [0.25]
    latest = CheckpointStore(tmp_path).latest()
    assert latest is not None and latest.id == 1 and sorted(latest.parts) == sorted(REPLICAS)
    clock.now += 0.5
    assert checkpointer.due() is None  # the interval counts from the end of the last one
    clock.now += 0.5
    assert checkpointer.due() is not None


def test_a_replica_that_ended_is_served_by_its_final_part_and_ended_sources_are_not_asked(tmp_path):
    clock = Clock()
    checkpointer = Checkpointer(CheckpointStore(tmp_path), plan(), {}, 1.0, clock)
    checkpointer.stored("numbers/0", 0, part("numbers/0", finished=True), final=True)
    clock.now += 1.0
    checkpoint, asked = checkpointer.due()
    assert asked == {"numbers/1"}
    assert checkpointer.stored("numbers/1", checkpoint, part("numbers/1"), final=False) is None
    assert checkpointer.stored("Count/0", checkpoint, part("Count/0"), final=False) is None
    assert checkpointer.stored("store/0", 0, part("store/0", finished=True), final=True) == checkpoint
    assert CheckpointStore(tmp_path).latest().parts["numbers/0"].finished


def test_a_late_or_repeated_part_changes_nothing_and_a_rollback_drops_the_checkpoint_under_way(tmp_path):
    clock = Clock()
    store = CheckpointStore(tmp_path)
    checkpointer = Checkpointer(store, plan(), {}, 1.0, clock)
    clock.now += 1.0
    checkpoint, _ = checkpointer.due()
    assert checkpointer.stored("Count/0", checkpoint + 5, part("Count/0"), final=False) is None
    checkpointer.stored("Count/0", checkpoint, part("Count/0"), final=False)
    assert checkpointer.stored("Count/0", checkpoint, part("Count/0"), final=False) is None
    checkpointer.roll_back()
    clock.now += 1.0
    again, _ = checkpointer.due()
    assert again == checkpoint + 1  # ids only grow
    assert store.latest() is None


def test_the_final_checkpoint_takes_every_final_part(tmp_path):
    checkpointer = Checkpointer(CheckpointStore(tmp_path), plan(), {}, 1.0, Clock())
    for replica in REPLICAS:
        checkpointer.stored(replica, 0, part(replica, finished=True), final=True)
    final = checkpointer.finish()
    latest = CheckpointStore(tmp_path).latest()
    assert latest.id == final and latest.finished and all(p.finished for p in latest.parts.values())
