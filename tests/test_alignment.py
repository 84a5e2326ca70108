"""Barrier alignment stepped message by message (``flowgraph.runtime.alignment``), no sockets."""

from __future__ import annotations

import pytest

from flowgraph.runtime.alignment import Alignment, AlignmentError


def feed(alignment: Alignment, arrivals: list[tuple[str, str]]) -> list[str]:
    """What a replica sees, in order, when ``arrivals`` come as (producer, message): data items, ``B<n>`` barriers
    and ``E`` end of stream; an aligned checkpoint shows as ``checkpoint <n>``."""
    seen: list[str] = []

    def deliver(producer: str, message: str) -> None:
        if message.startswith("B"):
            alignment.barrier(producer, int(message[1:]))
        elif message == "E":
            alignment.end(producer)
        else:
            seen.append(message)
        drain()

    def drain() -> None:
        while True:
            aligned = alignment.take_aligned()
            if aligned is not None:
                seen.append(f"checkpoint {aligned}")
            released = alignment.next_released()
            if released is None:
                if aligned is None:
                    return
                continue
            deliver(*released)

    for producer, message in arrivals:
        if alignment.holds(producer):
            alignment.hold(producer, (producer, message))
        else:
            deliver(producer, message)
    return seen


@pytest.mark.parametrize(("arrivals", "seen"), [
    ([("a", "1"), ("a", "B1"), ("a", "2"), ("b", "x"), ("b", "B1"), ("b", "y")],
     ["1", "x", "checkpoint 1", "2", "y"]),
    ([("a", "B1"), ("a", "E"), ("b", "x"), ("b", "B1")],
     ["x", "checkpoint 1"]),
    ([("a", "E"), ("b", "x"), ("b", "B1"), ("b", "y")],
     ["x", "checkpoint 1", "y"]),
    ([("a", "B1"), ("a", "1"), ("a", "B2"), ("a", "2"), ("b", "B1"), ("b", "x"), ("b", "B2")],
     ["checkpoint 1", "1", "x", "checkpoint 2", "2"]),
    ([("a", "B1"), ("a", "1"), ("b", "x"), ("b", "E")],
     ["x", "checkpoint 1", "1"]),
], ids=["two-producers", "ended-after-its-barrier", "ended-before", "two-checkpoints-queued", "end-aligns"])
def test_what_a_replica_sees(arrivals, seen):
    assert feed(Alignment(["a", "b"]), arrivals) == seen


def test_one_producer_aligns_at_its_barrier():
    alignment: Alignment = Alignment(["a"])
    assert feed(alignment, [("a", "1"), ("a", "B1"), ("a", "2")]) == ["1", "checkpoint 1", "2"]
    assert alignment.idle


def test_nothing_is_lost_or_reordered_per_producer_over_many_interleavings():
    import random

    rng = random.Random(7)
    for _ in range(200):
        producers = ["a", "b", "d"]
        streams = {p: [*(f"{p}{i}" for i in range(5))] for p in producers}
        sends = {p: [] for p in producers}
        for p in producers:
            cut = rng.randrange(6)
            sends[p] = [*streams[p][:cut], "B1", *streams[p][cut:], *(["E"] if rng.random() < 0.5 else [])]
        arrivals = []
        while any(sends.values()):
            p = rng.choice([p for p in producers if sends[p]])
            arrivals.append((p, sends[p].pop(0)))
        alignment: Alignment = Alignment(producers)
        seen = feed(alignment, arrivals)
        assert seen.count("checkpoint 1") == 1
        cut = seen.index("checkpoint 1")
        for p in producers:
            mine = [m for m in seen if m.startswith(p)]
            assert mine == streams[p]  # every item once, in its producer's order
        before = set(seen[:cut])
        for p, message in arrivals:  # an item is on the barrier's side its producer sent it on
            if message.startswith(p):
                sent_before = arrivals.index((p, message)) < arrivals.index((p, "B1"))
                assert (message in before) == sent_before
        assert alignment.idle


def test_a_barrier_of_another_checkpoint_while_one_aligns_is_a_protocol_error():
    alignment: Alignment = Alignment(["a", "b"])
    alignment.barrier("a", 1)
    with pytest.raises(AlignmentError, match="checkpoint 2 came while checkpoint 1 aligns"):
        alignment.barrier("b", 2)
