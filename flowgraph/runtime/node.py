"""Driving a node or a sink: ``process`` on every input item, in slices, outputs handed on per slice.

Outputs of a slice are handed on together; between slices partial batches
go out when due, so a slow node still sends promptly while a fast one pays
per-item costs only where the user's code runs (``slices``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from operator import length_hint
from types import GeneratorType
from typing import Any

from ..errors import Phase
from ..model.policy import ErrorPolicy
from .context import Context
from .counters import Counters
from .failures import Failure, ProtocolError, Stopped
from .guard import ItemGuard, set_aside
from .inputs import Barrier, Batch, Inputs
from .operator import Operator
from .outputs import Outputs
from .slices import next_slice

_NONE = type(None)


def drive_node(operator: Operator, inputs: Inputs, outputs: Outputs, counters: Counters, context: Context,
               flush: Callable[[], None], flush_idle: Callable[[], None], idle_wait_ms: int,
               collect: Callable[[list[Any]], None] | None,
               policy: ErrorPolicy, guard: ItemGuard | None = None,
               barrier: Callable[[int], None] | None = None) -> None:
    """Run ``operator.process`` on every item until end of stream from every upstream replica.

    ``flush`` sends partial batches and looks for a stop (``flush_idle``
    when no input waits); ``collect`` (for
    ``flowgraph.testing``) gets every batch received; ``guard``, for a node
    whose error ``policy`` catches anything, runs each item under it; a
    poison item is set aside as the policy says; ``barrier`` gets each
    aligned checkpoint (its id) between batches. Raises ``Failure``.
    """
    has_outputs = outputs.emits_items
    acks = inputs.acks if inputs.acks.active else None
    clock = time.monotonic
    size = 1
    while True:
        try:
            batch = inputs.receive()
            if batch is None:
                if inputs.is_done:
                    return
                flush_idle()  # partial batches out, a stop looked for, with restarts rewires and acks served
                batch = inputs.wait_receive(outputs.retry_ms if outputs.spill_backlog else idle_wait_ms)
        except ProtocolError as error:
            raise Failure(Phase.RECEIVE, error) from error
        if batch is None:
            continue
        if type(batch) is Barrier:
            assert barrier is not None, "barriers come only in a run with checkpoints"
            barrier(batch.checkpoint)
            continue
        assert type(batch) is Batch
        items = batch.items
        context.input = batch.upstream
        if batch.poison:
            letter = set_aside(items[0], policy, counters, context)
            if letter is not None:
                outputs.emit_dead_letters([letter])
            counters.items_in += 1
            items = []
        if collect is not None:
            collect(items)
        start, count = 0, len(items)
        counters.in_flight = count
        while start < count:
            chunk = items if start == 0 and size >= count else items[start:start + size]
            began = clock()
            blocked = counters.blocked_s
            if guard is None:
                results = run_chunk(operator, chunk, has_outputs)
            else:
                results, letters = guard.run(chunk, has_outputs)
                if letters:
                    outputs.emit_dead_letters(letters)
            if results:
                outputs.emit_many(results)
                counters.items_out += len(results)
            now = clock()
            elapsed = now - began
            counters.busy_s += elapsed - (counters.blocked_s - blocked)
            counters.items_in += len(chunk)
            size = next_slice(size, elapsed)
            start += len(chunk)
            if now >= outputs.deadline:
                flush()
        if batch.loop:
            counters.loop_done += count
        counters.in_flight = 0
        if acks is not None:
            acks.processed(batch.sender, batch.incarnation, batch.seq, outputs.watermark())


def run_chunk(operator: Operator, chunk: list[Any], keep: bool) -> list[Any]:
    """The outputs of ``process`` on each item of ``chunk`` (or nothing when not ``keep``: a sink).

    A plain function runs through ``map`` (a loop in C); when it raises, the
    list iterator tells how far it got, so the failure still names the item.
    Generators a plain function returns are run. Raises ``Failure``.
    """
    process = operator.process
    if operator.yields:
        results: list[Any] = []
        append = results.append
        item = None
        try:
            for item in chunk:
                for output in process(item):
                    append(output)
        except Stopped:
            raise
        except Exception as error:
            raise Failure(Phase.PROCESS, error, item, has_item=True) from error
        return results if keep else []
    items = iter(chunk)
    try:
        results = list(map(process, items))
    except Stopped:
        raise
    except Exception as error:
        failed = len(chunk) - length_hint(items) - 1
        raise Failure(Phase.PROCESS, error, chunk[failed], has_item=True) from error
    if not keep:  # a sink: only a returned generator matters (run it); most return None, counted at C speed
        if results.count(None) != len(results) and GeneratorType in map(type, results):
            _expand(results, chunk)
        return []
    kinds = set(map(type, results))  # one pass in C for both checks
    if GeneratorType in kinds:  # a function that returned a generator: run it
        results = _expand(results, chunk)
    elif _NONE not in kinds:
        return results
    return [result for result in results if result is not None]


def _expand(results: list[Any], chunk: list[Any]) -> list[Any]:
    expanded: list[Any] = []
    for result, item in zip(results, chunk, strict=True):
        if type(result) is not GeneratorType:
            expanded.append(result)
            continue
        try:
            expanded.extend(result)
        except Exception as error:
            raise Failure(Phase.PROCESS, error, item, has_item=True) from error
    return expanded
