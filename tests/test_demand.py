"""The demand-driven shuffle's arithmetic: the credit window, top-ups and how a batch is split (tables)."""

from __future__ import annotations

import pytest

from flowgraph.runtime.demand import CREDIT_QUEUE_S, CREDIT_START_ITEMS, credit_to_grant, credit_window, split_parts


@pytest.mark.parametrize("busy_s, items_in, most, window", [
    (0.0, 0, 8192, CREDIT_START_ITEMS),        # nothing measured yet: the start credit
    (0.0, 0, 10, 10),                          # ... but never more than the queues hold
    (0.5, 0, 8192, CREDIT_START_ITEMS),
    (1.0, 1000, 8192, int(1000 * CREDIT_QUEUE_S)),  # 1 ms an item: 20 ms of work
    (1.0, 1_000_000, 8192, 8192),              # a fast consumer: what the queues hold
    (10.0, 10, 8192, 1),                       # a slow consumer: at least one item
])
def test_a_consumer_grants_about_twenty_milliseconds_of_its_own_work(busy_s, items_in, most, window):
    assert credit_window(busy_s, items_in, most) == window


@pytest.mark.parametrize("busy_s, items_in, most, concurrency, window", [
    (0.0, 0, 8192, 100, 100),   # before measuring: enough to fill its window
    (10.0, 10, 8192, 32, 32),   # slow per item (it waits on the network): still its concurrency
    (1.0, 10_000, 8192, 32, 200),  # fast: 20 ms of work is more
    (10.0, 10, 16, 32, 16),     # never more than the queues hold
])
def test_a_consumer_with_concurrency_grants_at_least_as_many_items_as_it_takes_at_once(busy_s, items_in, most,
                                                                                      concurrency, window):
    assert credit_window(busy_s, items_in, most, concurrency) == window


@pytest.mark.parametrize("granted, received, window, more", [
    (64, 0, 64, 0),     # all of it still waits
    (64, 31, 64, 0),    # more than half waits
    (64, 32, 64, 32),   # half arrived: top up to the window
    (64, 64, 64, 64),   # all arrived
    (64, 60, 20, 16),   # the window shrank (a slower consumer): grant up to the new one
    (64, 10, 200, 146),  # the window grew: more than half of it is missing
])
def test_a_grant_is_topped_up_once_half_of_it_arrived(granted, received, window, more):
    assert credit_to_grant(granted, received, window) == more


@pytest.mark.parametrize("count, credit, turn, limit, parts", [
    (10, [64, 64], 0, 1024, [(0, 5), (1, 5)]),           # equal shares, in turn order
    (10, [64, 64], 1, 1024, [(1, 5), (0, 5)]),           # the turn goes first
    (10, [0, 3, 64], 0, 1024, [(1, 3), (2, 5)]),         # cut to credit; no credit, no part
    (9, [64, 64, 64, 64], 2, 1024, [(2, 3), (3, 3), (0, 3)]),  # the last share may not be needed
    (100, [64, 64], 0, 16, [(0, 16), (1, 16)]),          # cut to a batch: the rest waits for a later round
    (5, [0, 0], 0, 1024, []),                            # no credit anywhere: wait
    (1, [64, 64, 64], 1, 1024, [(1, 1)]),
])
def test_a_batch_leaves_in_consecutive_parts_to_consumers_with_credit(count, credit, turn, limit, parts):
    assert split_parts(count, credit, turn, limit) == parts


def test_parts_never_exceed_the_items_nor_any_credit():
    for count in range(1, 40):
        for credit in ([1, 2, 3], [0, 50, 7], [9, 9, 9, 9]):
            for turn in range(len(credit)):
                parts = split_parts(count, credit, turn, 8)
                assert sum(size for _, size in parts) <= count
                assert all(0 < size <= min(credit[consumer], 8) for consumer, size in parts)
                assert len({consumer for consumer, _ in parts}) == len(parts)
