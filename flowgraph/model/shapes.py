"""What form the user's code has, and whether the runtime can call it as it will.

Found once at declaration, so the worker has one loop (``runtime.operator``)
and a node whose code cannot take one item is a ``TopologyError`` before
anything starts, not a failure at the first item.
"""

from __future__ import annotations

import enum
import inspect
import types
from typing import Any

from ..errors import TopologyError


class Shape(enum.Enum):
    """The form of the user's code, found once at declaration."""

    FUNCTION = "function"
    """A plain function: its return value is the output unless it is None."""
    GENERATOR = "generator"
    """A generator function: everything it yields is output."""
    CLASS = "class"
    """A class: one instance per replica, with setup/process|generate/finish/teardown."""
    INSTANCE = "instance"
    """An object with process()/generate(): each replica gets its own copy."""


def _shape_of(what: str, role: str, code: Any) -> Shape:
    method = "generate" if role == "source" else "process"
    if inspect.isclass(code):
        if not callable(getattr(code, method, None)):
            raise TopologyError(f"{what}: class {code.__name__} has no {method}() method")
        return Shape.CLASS
    if inspect.isgeneratorfunction(code):
        return Shape.GENERATOR
    if inspect.isfunction(code) or inspect.isbuiltin(code) or inspect.ismethod(code):
        return Shape.FUNCTION
    if callable(getattr(code, method, None)):
        return Shape.INSTANCE
    if callable(code):
        return Shape.FUNCTION
    raise TopologyError(
        f"{what}: expected a function, a class or an object with {method}(), not {code!r}"
    )


def checked_shape(what: str, role: str, code: Any) -> Shape:
    """The shape of ``code`` (``role``: source, node or sink), after checking that the runtime can call it as it will.

    Raises ``TopologyError`` naming ``what`` (``node 'fetch'``) and the signature.
    """
    shape = _shape_of(what, role, code)
    if shape in (Shape.FUNCTION, Shape.GENERATOR):
        if role == "source":
            _check_call(what, code, 0, "a source's function takes no arguments")
        else:
            _check_call(what, code, 1, "a node's function takes the item as its only argument")
        return shape
    if shape is Shape.CLASS:
        _check_call(what, code, 0, "every replica makes its instance without arguments; give the class its "
                    f"settings as class attributes, or declare an instance: topo.{role}({code.__name__}(...))")
    if role == "source":
        _check_call(what, _method(code, shape, "generate"), 0, "generate() takes no arguments")
    else:
        _check_call(what, _method(code, shape, "process"), 1, "process() takes the item as its only argument")
    for phase in ("setup", "finish", "teardown"):
        _check_call(what, _method(code, shape, phase), 0, "setup(), finish() and teardown() take no arguments")
    return shape


def _method(code: Any, shape: Shape, name: str) -> Any:
    """``code``'s method ``name`` as a replica will call it.

    None (not checked) when it is undefined, or on a class neither a
    function nor a static or class method.
    """
    if shape is Shape.INSTANCE:
        return getattr(code, name, None)
    attribute = inspect.getattr_static(code, name, None)
    if isinstance(attribute, (staticmethod, classmethod)):
        return getattr(code, name)
    if inspect.isfunction(attribute):
        return types.MethodType(attribute, object())  # bound to a stand-in: the class is not instantiated here
    return None


def _check_call(what: str, function: Any, item_count: int, hint: str) -> None:
    """Raise ``TopologyError`` unless ``function`` can be called with ``item_count`` positional items."""
    if function is None:
        return
    bound = 0
    if inspect.ismethod(function):  # check the function as written, self included
        function, bound = function.__func__, 1
    try:  # the runtime calls a functools.wraps wrapper, whatever the function it wraps takes
        signature = inspect.signature(function, follow_wrapped=False)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*[None] * (bound + item_count))
    except TypeError:
        pass
    else:
        return
    qualname = getattr(function, "__qualname__", type(function).__qualname__)
    label = qualname.rpartition("<locals>.")[2]  # Count.process, not make.<locals>.Count.process
    call = "with one item" if item_count else "without arguments"
    raise TopologyError(
        f"{what}: {label}{signature} cannot be called {call} "
        f"({_why_not(signature, bound, item_count)}); {hint}"
    )


def _why_not(signature: inspect.Signature, bound: int, item_count: int) -> str:
    """Why ``signature`` does not bind ``bound`` (self) and then ``item_count`` positional arguments."""
    parameters = list(signature.parameters.values())
    keyword_only = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if keyword_only:
        plural = "s" if len(keyword_only) > 1 else ""
        return f"it has required keyword-only parameter{plural} {', '.join(keyword_only)}"
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    self_parameter = positional.pop(0) if bound and positional else None
    besides = f" besides {self_parameter.name}" if self_parameter else ""
    required = [p for p in positional if p.default is p.empty]
    if len(required) > item_count:
        plural = "s" if len(required) > 1 else ""
        return f"it has {len(required)} required parameter{plural}{besides}"
    if any(p is not self_parameter for p in parameters):
        return f"it takes no positional parameters{besides}"
    return f"it takes no parameters{besides}"
