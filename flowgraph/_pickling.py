"""Shipping node code to workers with cloudpickle.

User code (the topology file, a test module, a script) is pickled by value,
so a worker needs neither the file nor the user's ``sys.path``; flowgraph,
``nodes`` and installed packages travel by reference and are imported on
the worker.
"""

from __future__ import annotations

import inspect
import os
import sys
import sysconfig
import types
from typing import Any

import cloudpickle

from .dsl import NodeSpec, TopologySpec

_INSTALLED_ROOTS = tuple(
    {os.path.realpath(path) for key in ("stdlib", "platstdlib", "purelib", "platlib")
     if (path := sysconfig.get_paths().get(key))}
)
_BY_REFERENCE_PACKAGES = {"flowgraph", "nodes"}


def dump_for_workers(spec: TopologySpec, plan: Any) -> tuple[bytes, dict[str, bytes]]:
    """The plan and each node's spec, pickled apart, user modules by value.

    A worker unpickles the plan (which carries by_key functions) and only
    its own node, so one node's code never has to load where another runs.
    ``cloudpickle.loads`` gives fresh node objects each time.
    """
    for node in spec.nodes:
        _register_module_by_value(node.code)
        for edge in node.inputs:
            if callable(edge.grouping.key):
                _register_module_by_value(edge.grouping.key)
    nodes = {node.name: cloudpickle.dumps(node, protocol=5) for node in spec.nodes}
    return cloudpickle.dumps(plan, protocol=5), nodes


def unpicklable_reason(node: NodeSpec) -> str | None:
    """Why ``node``'s code cannot be sent to a worker, or None if it can.

    Names the global, closure variable or attribute that fails, since the
    bare pickling error rarely says which one it was.
    """
    _register_module_by_value(node.code)
    try:
        cloudpickle.dumps(node.code)
    except Exception as error:  # pickling can fail with anything a __reduce__ raises
        return _explain(node.code, error)
    return None


def _explain(code: Any, error: Exception) -> str:
    for label, value in _captured(code):
        try:
            cloudpickle.dumps(value)
        except Exception as inner:  # as above
            return f"{label} (a {type(value).__qualname__}) cannot be pickled: {inner}"
    return f"{_describe(code)} cannot be pickled: {error}"


def _captured(code: Any) -> list[tuple[str, Any]]:
    """(label, value) of everything ``code`` refers to that pickling must carry."""
    if inspect.isclass(code):
        found = []
        for attribute, value in vars(code).items():
            if inspect.isfunction(value):
                found += [(f"method {code.__name__}.{attribute}: {label}", captured)
                          for label, captured in _captured(value)]
        return found
    if isinstance(code, (types.FunctionType, types.MethodType)):
        function = code.__func__ if isinstance(code, types.MethodType) else code
        variables = inspect.getclosurevars(function)
        return [
            *((f"function {function.__name__} uses global {name!r}", value)
              for name, value in variables.globals.items()),
            *((f"function {function.__name__} captures variable {name!r}", value)
              for name, value in variables.nonlocals.items()),
        ]
    return [(f"attribute {name!r} of {type(code).__name__}", value)
            for name, value in getattr(code, "__dict__", {}).items()]


def _describe(code: Any) -> str:
    if inspect.isclass(code):
        return f"class {code.__name__}"
    if callable(code) and hasattr(code, "__name__"):
        return f"function {code.__name__}"
    return f"object {type(code).__name__}"


def _register_module_by_value(code: Any) -> None:
    if not inspect.isclass(code) and not inspect.isfunction(code):
        code = type(code)
    module = sys.modules.get(getattr(code, "__module__", "") or "")
    if module is None or module.__name__ == "__main__" or _is_installed(module):
        return
    cloudpickle.register_pickle_by_value(module)


def _is_installed(module: types.ModuleType) -> bool:
    if module.__name__.partition(".")[0] in _BY_REFERENCE_PACKAGES:
        return True
    path = getattr(module, "__file__", None)
    if path is None:  # built into the interpreter, or made at run time (only by value reaches a worker)
        return module.__name__ in sys.builtin_module_names
    return os.path.realpath(path).startswith(_INSTALLED_ROOTS)
