"""How much a replica does between looks at its outputs: adaptive slices of items, pure functions.

A replica works through its input (a node) or its generator (a source) in
slices that take about ``SLICE_S`` each; between slices it sends partial
batches that are due and looks for a stop. Fast code pays per-item costs
only where the user's code runs; slow code still sends promptly.
"""

from __future__ import annotations

SLICE_S = 0.001
"""A slice of work takes about this long."""
MAX_SLICE = 1024
"""A node never takes more items than this into one slice."""


def next_slice(size: int, elapsed_s: float) -> int:
    """A node's next slice size: twice as many items after a quick slice, half after a slow one.

    >>> next_slice(8, 0.0002), next_slice(8, 0.003), next_slice(1024, 0.0), next_slice(1, 1.0)
    (16, 4, 1024, 1)
    """
    return min(size * 2, MAX_SLICE) if elapsed_s < SLICE_S else max(1, size // 2)


def next_chunk(size: int, most: int, elapsed_s: float, taken: int) -> tuple[int, bool]:
    """A source's next chunk size, and whether it is slow (``SLICE_S`` or more per item: send each item now).

    A chunk that took under half a slice doubles, one over a slice halves,
    up to ``most`` (a batch).

    >>> next_chunk(4, 1024, 0.0001, 4), next_chunk(4, 1024, 0.0009, 4), next_chunk(4, 1024, 0.01, 4)
    ((8, False), (2, False), (1, True))
    >>> next_chunk(1, 1024, 0.5, 0)  # the generator blocked before its next item
    (1, True)
    """
    if elapsed_s >= SLICE_S * max(1, taken):
        return 1, True
    if elapsed_s < SLICE_S / 2:
        return min(size * 2, most), False
    return max(1, size // 2), False
