"""Shipping node code to workers with cloudpickle.

User code (the topology file, a test module, a script) is pickled by value,
so a worker needs neither the file nor the user's ``sys.path``; flowgraph,
``nodes`` and installed packages travel by reference and are imported on
the worker. Code objects keep their file name (cloudpickle would write
``<dynamic-code>``), and the text of those files travels too
(``source_texts``, ``remember_sources``), so a traceback on any host shows
the user's file, line and source text, as Python does.
"""

from __future__ import annotations

import inspect
import io
import linecache
import marshal
import os
import sys
import sysconfig
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import cloudpickle

if TYPE_CHECKING:
    from ..model.dsl import NodeSpec, TopologySpec

_INSTALLED_ROOTS = tuple(
    {os.path.realpath(path) for key in ("stdlib", "platstdlib", "purelib", "platlib")
     if (path := sysconfig.get_paths().get(key))}
)
_BY_REFERENCE_PACKAGES = {"flowgraph", "nodes"}


class _CodePickler(cloudpickle.Pickler):
    """cloudpickle, but code objects go whole through ``marshal``: their file name stays.

    Launcher and workers run the same Python minor version (checked for
    every host), which is what ``marshal`` needs.
    """

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.CodeType:
            return marshal.loads, (marshal.dumps(obj),)
        return super().reducer_override(obj)


def dumps_code(obj: Any) -> bytes:
    """``obj`` (node code, a plan carrying by_key functions) pickled for a worker."""
    file = io.BytesIO()
    _CodePickler(file, protocol=5).dump(obj)
    return file.getvalue()


def dump_for_workers(spec: TopologySpec, plan: Any) -> tuple[bytes, dict[str, bytes]]:
    """The plan and each node's spec, pickled apart, user modules by value.

    A worker unpickles the plan (which carries by_key functions) and only
    its own node, so one node's code never has to load where another runs.
    ``cloudpickle.loads`` gives fresh node objects each time.
    """
    for module in _user_modules(spec):
        if module.__name__ != "__main__":  # cloudpickle pickles __main__ by value anyway
            cloudpickle.register_pickle_by_value(module)
    nodes = {node.name: dumps_code(node) for node in spec.nodes}
    return dumps_code(plan), nodes


def source_texts(spec: TopologySpec) -> dict[str, str]:
    """The text of every source file the topology's own code comes from, by file name."""
    texts = {}
    for module in _user_modules(spec):
        path = getattr(module, "__file__", None)
        if path:
            lines = linecache.getlines(path)
            if lines:
                texts[path] = "".join(lines)
    return texts


def remember_sources(texts: Mapping[str, str]) -> None:
    """Make ``linecache`` (and so tracebacks) know the launcher's source files, whatever is on this host."""
    for path, text in texts.items():
        lines = text.splitlines(keepends=True)
        linecache.cache[path] = (len(text), None, lines, path)  # mtime None: never checked against a file here


def _user_modules(spec: TopologySpec) -> set[types.ModuleType]:
    """The modules of the topology's code and by_key functions that travel by value (``__main__`` too)."""
    found = set()
    for node in spec.nodes:
        codes = [node.code, *(edge.grouping.key for edge in node.inputs if callable(edge.grouping.key))]
        for code in codes:
            module = _module_by_value(code)
            if module is not None:
                found.add(module)
    return found


def unpicklable_reason(node: NodeSpec) -> str | None:
    """Why ``node``'s code cannot be sent to a worker, or None if it can.

    Names the global, closure variable or attribute that fails, since the
    bare pickling error rarely says which one it was.
    """
    _register_module_by_value(node.code)
    try:
        dumps_code(node.code)
    except Exception as error:  # pickling can fail with anything a __reduce__ raises
        return _explain(node.code, error)
    return None


def _explain(code: Any, error: Exception) -> str:
    for label, value in _captured(code):
        try:
            dumps_code(value)
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
    module = _module_by_value(code)
    if module is not None and module.__name__ != "__main__":  # cloudpickle pickles __main__ by value anyway
        cloudpickle.register_pickle_by_value(module)


def _module_by_value(code: Any) -> types.ModuleType | None:
    """The module ``code`` comes from if it travels by value (``__main__``, or not installed), else None."""
    if not inspect.isclass(code) and not inspect.isfunction(code):
        code = type(code)
    module = sys.modules.get(getattr(code, "__module__", "") or "")
    if module is None or (module.__name__ != "__main__" and _is_installed(module)):
        return None
    return module


def _is_installed(module: types.ModuleType) -> bool:
    if module.__name__.partition(".")[0] in _BY_REFERENCE_PACKAGES:
        return True
    path = getattr(module, "__file__", None)
    if path is None:  # built into the interpreter, or made at run time (only by value reaches a worker)
        return module.__name__ in sys.builtin_module_names
    return os.path.realpath(str(path)).startswith(_INSTALLED_ROOTS)
