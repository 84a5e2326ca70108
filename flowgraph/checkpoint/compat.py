"""Whether a checkpoint can serve the topology being run: its fingerprint then, against the topology's now.

A fingerprint (``fingerprint(spec)``, stored in every manifest) says of each
node what decides whether its stored state still fits: its kind, its
parallelism, whether it keeps state, whether that state can be split by key,
and a hash of its code. ``check_compatible`` compares two of them before a
resumed run starts anything, and refuses with ``CheckpointError`` what would
restore state into code that may not read it, or into replicas it cannot be
dealt over.
"""

from __future__ import annotations

import hashlib
import inspect
import struct
import types
from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointError
from ..model.dsl import GroupingKind, NodeKind, NodeSpec, TopologySpec
from ..model.shapes import Shape

_START_AGAIN = "undo the change to resume, or run it without --resume to start again"


def code_hash(code: Any) -> str:
    """A sha256 (hex) of a node's code, the same in every process of the same Python version.

    A function hashes its bytecode, constants (nested functions, lambdas and
    comprehensions recursively), names and signature counts, but not its
    line numbers or file name: moving it, or editing comments and blank
    lines, keeps the hash; editing what it does (or its docstring) changes
    it. A class hashes the functions its own ``__dict__`` and those of its
    bases define (methods, class and static methods, properties), by name;
    any other object, its class. Never ``id()``, ``hash()`` or a pickle,
    which change from one process to the next.

    >>> code_hash(lambda item: item + 1) == code_hash(lambda item: item + 1)
    True
    >>> code_hash(lambda item: item + 1) == code_hash(lambda item: item + 2)
    False
    """
    if inspect.isclass(code):
        return hashlib.sha256(_class_bytes(code)).hexdigest()
    compiled = getattr(getattr(code, "__func__", code), "__code__", None)  # a function, or a bound method
    if isinstance(compiled, types.CodeType):
        return hashlib.sha256(_code_bytes(compiled)).hexdigest()
    return hashlib.sha256(_class_bytes(type(code))).hexdigest()


def _class_bytes(cls: type) -> bytes:
    """The functions ``cls`` and its bases (up to ``object``) define, by name, as bytes to hash."""
    classes = []
    for base in cls.__mro__:
        if base is object:
            continue
        attributes = []
        for name in sorted(vars(base)):
            functions = _functions(vars(base)[name])
            if functions:
                attributes.append(_framed(name.encode(), *(_code_bytes(function.__code__) for function in functions)))
        classes.append(_framed(*attributes))
    return _framed(*classes)


def _functions(attribute: Any) -> list[types.FunctionType]:
    """The functions behind a class attribute: a method, a class or static method, a property's accessors."""
    if isinstance(attribute, (classmethod, staticmethod)):
        attribute = attribute.__func__
    found = [attribute.fget, attribute.fset, attribute.fdel] if isinstance(attribute, property) else [attribute]
    return [function for function in found if isinstance(function, types.FunctionType)]


def _code_bytes(code: types.CodeType) -> bytes:
    """What a code object does, as bytes to hash: no line numbers (``co_linetable``), no file name."""
    return _framed(
        code.co_name.encode(),
        code.co_code,
        getattr(code, "co_exceptiontable", b""),  # Python 3.11+: where try blocks are, as bytecode offsets
        _framed(*(_constant_bytes(constant) for constant in code.co_consts)),
        _framed(*(name.encode() for name in code.co_names)),
        _framed(*(name.encode() for name in code.co_varnames)),
        _framed(*(name.encode() for name in (*code.co_freevars, *code.co_cellvars))),
        struct.pack("!4I", code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags),
    )


def _constant_bytes(constant: Any) -> bytes:
    """A constant of compiled code as bytes: a nested code object by what it does, a frozenset in sorted order.

    The elements of a frozenset (``x in {"a", "b"}``) are in the order of
    their salted ``hash``, so its ``repr`` differs between processes.
    """
    if isinstance(constant, types.CodeType):
        return b"code:" + _code_bytes(constant)
    if isinstance(constant, tuple):
        return b"tuple:" + _framed(*(_constant_bytes(element) for element in constant))
    if isinstance(constant, frozenset):
        return b"frozenset:" + _framed(*sorted(_constant_bytes(element) for element in constant))
    return f"{type(constant).__qualname__}:{constant!r}".encode()


def _framed(*fields: bytes) -> bytes:
    """``fields`` joined, each after its length, so that no two lists of fields give the same bytes."""
    return b"".join(struct.pack("!I", len(field)) + field for field in fields)


def stateful(node: NodeSpec) -> bool:
    """Whether a checkpoint stores state of ``node``.

    A source does (its position); so does a class or object node that
    defines ``snapshot()`` or is not restartable (its pickled ``__dict__``).
    Functions, generators and restartable classes without ``snapshot()``
    keep none.
    """
    if node.kind is NodeKind.SOURCE:
        return True
    if node.shape not in (Shape.CLASS, Shape.INSTANCE):
        return False
    return _has_snapshot(node) or not node.restartable


def _has_snapshot(node: NodeSpec) -> bool:
    return callable(getattr(node.code, "snapshot", None))


def keyed(node: NodeSpec) -> bool:
    """Whether every input of ``node`` is ``by_key`` (and it has one): each key's items reach one replica only."""
    return bool(node.inputs) and all(edge.grouping.kind is GroupingKind.BY_KEY for edge in node.inputs)


def fingerprint(spec: TopologySpec) -> dict[str, Any]:
    """What a checkpoint records of ``spec`` to tell later whether it can serve it (JSON-able).

    ``snapshot`` says the node defines ``snapshot()``: its state is what that
    returns (a mapping by key can be split), not its pickled ``__dict__``.
    """
    return {
        "topology": spec.name,
        "nodes": {
            node.name: {
                "kind": node.kind.value,
                "parallelism": node.parallelism,
                "stateful": stateful(node),
                "keyed": keyed(node),
                "snapshot": _has_snapshot(node),
                "code": code_hash(node.code),
            }
            for node in spec.nodes
        },
    }


def check_compatible(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Raise ``CheckpointError`` unless a checkpoint of fingerprint ``saved`` can serve topology ``current``.

    Refused, each named in the message: a node added or removed; a node
    whose kind changed; a node with state whose code changed, or that kept
    none at the checkpoint; a source whose parallelism changed; a node with
    state whose parallelism changed, unless its inputs are all ``by_key``
    and its ``snapshot()`` (a mapping by key) can be split, then and now.
    Nodes without state may change their code and parallelism freely.
    """
    then, now = saved["nodes"], current["nodes"]
    problems = [f"{node['kind']} {name!r} was added since the checkpoint"
                for name, node in now.items() if name not in then]
    problems += [f"{node['kind']} {name!r} was removed since the checkpoint"
                 for name, node in then.items() if name not in now]
    problems += [problem for name, node in now.items() if name in then
                 if (problem := _node_problem(name, then[name], node))]
    if problems:
        raise CheckpointError(f"the checkpoint cannot serve topology {current['topology']!r}: "
                              f"{'; '.join(problems)}; {_START_AGAIN}")


def _node_problem(name: str, then: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """Why node ``name``'s state at the checkpoint (``then``) cannot serve it ``now``; None if it can."""
    what = f"{now['kind']} {name!r}"
    if then["kind"] != now["kind"]:
        return f"{what} was a {then['kind']} at the checkpoint"
    if now["stateful"] and not then["stateful"]:
        return f"{what} keeps state now and kept none at the checkpoint, so there is none to restore"
    if not (then["stateful"] and now["stateful"]):
        return None
    if then["code"] != now["code"]:
        return f"{what}: its code changed since the checkpoint, and the new code may not read the state it stored"
    if then["parallelism"] == now["parallelism"]:
        return None
    change = f"{what}: its parallelism changed from {then['parallelism']} to {now['parallelism']}"
    if now["kind"] == NodeKind.SOURCE.value:
        return f"{change}, and a source's position cannot be split (resume with parallelism={then['parallelism']})"
    if not (_splittable(then) and _splittable(now)):
        return (f"{change}, and its state cannot be split: only a node whose inputs are all by_key and whose "
                f"snapshot() returns a mapping by the key can change it (resume with parallelism="
                f"{then['parallelism']})")
    return None


def _splittable(node: Mapping[str, Any]) -> bool:
    return bool(node["keyed"] and node["snapshot"])
