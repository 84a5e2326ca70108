"""One shape for every node: functions, generator functions, classes and objects.

The worker sees only an ``Operator``: ``setup()``, ``process(item)`` or
``generate()``, ``finish()``, ``teardown()``. ``process`` and ``finish``
return their output as the user's code did: None (no output), a generator
(all it yields) or any other value (one output item); ``emitted()`` turns
that into items.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..model.dsl import NodeKind, NodeSpec
from ..model.shapes import Shape


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Operator:
    """The four phases of one replica of a node."""

    setup: Callable[[], Any]
    process: Callable[[Any], Any]
    generate: Callable[[], Any]
    finish: Callable[[], Any]
    teardown: Callable[[], Any]
    yields: bool = False
    """``process`` is a generator function (else it returns a value, None, or now and then a generator)."""
    flush: Callable[[], Any] | None = None
    """A sink's ``flush()``: make what it was given durable (called before its input is acknowledged)."""
    seek: Callable[[int], Any] | None = None
    """A class source's ``seek(n)``: start after its first ``n`` items (a restarted source)."""
    instance: Any = None
    """The replica's instance of a class (or its copy of an object); None for a function (``snapshots``)."""
    asynchronous: bool = False
    """``process`` is an ``async def`` (a coroutine or an async generator function): it runs on an event loop."""


def make_operator(node: NodeSpec) -> Operator:
    """The operator of one replica; call once per replica (a class gets a new instance)."""
    if node.shape in (Shape.FUNCTION, Shape.GENERATOR):
        if node.kind is NodeKind.SOURCE:
            return Operator(_nothing, _no_process, node.code, _nothing, _nothing)
        return Operator(_nothing, node.code, _nothing, _nothing, _nothing, yields=node.shape is Shape.GENERATOR,
                        asynchronous=_is_async(node.code))
    instance = node.code() if node.shape is Shape.CLASS else node.code
    process = getattr(instance, "process", _no_process)
    return Operator(
        setup=getattr(instance, "setup", _nothing),
        process=process,
        generate=getattr(instance, "generate", _nothing),
        finish=getattr(instance, "finish", _nothing),
        teardown=getattr(instance, "teardown", _nothing),
        yields=inspect.isgeneratorfunction(process),
        flush=getattr(instance, "flush", None) if node.kind is NodeKind.SINK else None,
        seek=getattr(instance, "seek", None) if node.kind is NodeKind.SOURCE else None,
        instance=instance,
        asynchronous=_is_async(process),
    )


def _is_async(function: Any) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


def emitted(result: Any) -> Iterable[Any]:
    """The output items of a process() or finish() result."""
    if result is None:
        return ()
    if isinstance(result, types.GeneratorType):
        return result
    return (result,)


def generated(result: Any) -> Iterator[Any]:
    """The items of a source's generate() result: any iterable, or None for none."""
    return iter(()) if result is None else iter(result)


def _no_process(item: Any) -> None:
    raise TypeError("a source has no process()")
