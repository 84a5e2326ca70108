"""The window of items in flight (``runtime.window``), stepped by hand, and the spill of a feedback edge."""

from __future__ import annotations

import random

import pytest

from flowgraph.runtime.spill import Spill
from flowgraph.runtime.window import Window


def test_an_ordered_window_releases_a_result_only_after_every_earlier_one():
    window: Window[str] = Window(3)
    tickets = [window.admit(tag) for tag in "abc"]
    assert window.full and window.running == 3

    window.complete(tickets[2], "C")
    window.complete(tickets[1], "B")
    assert window.release() == []
    assert window.full and window.running == 1  # completed results waiting still hold their slots

    window.complete(tickets[0], "A")
    assert window.release() == [(0, "a", "A"), (1, "b", "B"), (2, "c", "C")]
    assert len(window) == 0 and not window.full


def test_an_unordered_window_releases_each_result_as_it_completes():
    window: Window[str] = Window(3, ordered=False)
    first, second, _ = (window.admit(tag) for tag in "abc")
    window.complete(second, "B")
    assert window.release() == [(1, "b", "B")]
    assert not window.full
    third = window.admit("d")
    window.complete(third, "D")
    window.complete(first, "A")
    assert window.release() == [(0, "a", "A"), (3, "d", "D")]
    assert len(window) == 1


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ordered", [True, False])
def test_a_window_releases_everything_once_in_any_completion_order(seed, ordered):
    rng = random.Random(seed)
    window: Window[int] = Window(4, ordered)
    running: list[int] = []
    released: list[int] = []
    admitted = 0
    while len(released) < 100:
        while admitted < 100 and not window.full:
            running.append(window.admit(admitted))
            admitted += 1
        assert len(window) <= 4
        ticket = running.pop(rng.randrange(len(running)))
        window.complete(ticket, ticket * 10)
        for ticket, tag, outcome in window.release():
            assert outcome == ticket * 10 and tag == ticket
            released.append(ticket)
    assert sorted(released) == list(range(100))
    if ordered:
        assert released == list(range(100))


def test_a_window_refuses_a_ticket_twice_and_a_capacity_below_one():
    window: Window[str] = Window(1)
    ticket = window.admit()
    window.complete(ticket, "x")
    with pytest.raises(KeyError, match="ticket 0 is not in flight"):
        window.complete(ticket, "y")
    with pytest.raises(ValueError, match="at least one item"):
        Window(0)


def test_a_spill_keeps_order_across_memory_and_disk():
    spill = Spill(budget_bytes=10)
    messages = [[bytes([n]) * (n % 7 + 1), b"h%d" % n] for n in range(50)]
    out = []
    for index, message in enumerate(messages):
        spill.push(message)
        if index % 3 == 2:  # take some out while more come in
            out.append(spill.peek())
            spill.pop()
    assert spill.on_disk > 0
    while (message := spill.peek()) is not None:
        out.append(message)
        spill.pop()
    assert [[bytes(frame) for frame in message] for message in out] == messages
    assert len(spill) == 0 and spill.disk_bytes == 0 and spill.spilled > 0
    spill.close()


def test_a_spill_takes_memoryviews_and_keeps_within_its_budget_in_memory():
    spill = Spill(budget_bytes=1000)
    big = memoryview(bytearray(b"x" * 600))
    spill.push([b"header", big])
    spill.push([b"header", big])  # over the budget: on disk
    assert spill.on_disk == 1 and spill.memory_bytes == 606
    assert bytes(spill.peek()[1]) == b"x" * 600
    spill.pop()
    assert bytes(spill.peek()[1]) == b"x" * 600
    spill.pop()
    assert spill.peek() is None
    spill.close()
