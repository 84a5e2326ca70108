"""Find the ``Topology`` a command line names: ``file.py[:VAR]`` or ``pkg.module[:VAR]``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

from ..errors import TopologyError
from ..model.dsl import Topology


class UserCodeError(Exception):
    """Importing the user's module raised; ``__cause__`` is the user's exception."""

    def __init__(self, target: str) -> None:
        super().__init__(f"importing {target} failed")
        self.target = target


def load_topology(target: str) -> Topology:
    """The topology named by ``target``.

    Raises ``TopologyError`` when the file or module does not exist, holds no
    or several topologies (without ``:VAR``), or ``VAR`` is not a topology;
    ``UserCodeError`` when the user's module itself raises while importing
    (``TopologyError`` raised by a declaration passes through as is).
    """
    location, variable = _split(target)
    module = _import(location)
    if variable is not None:
        found = getattr(module, variable, None)
        if not isinstance(found, Topology):
            raise TopologyError(
                f"{location} has no topology named {variable!r}"
                + (f" ({variable} is a {type(found).__name__})" if found is not None else "")
                + _listing(module)
            )
        return found
    topologies = _topologies(module)
    if not topologies:
        raise TopologyError(f"{location} defines no Topology; declare one with Topology(name)")
    if len(topologies) > 1:
        raise TopologyError(
            f"{location} defines several topologies ({', '.join(sorted(topologies))}); "
            f"pick one with {location}:NAME"
        )
    return next(iter(topologies.values()))


def _split(target: str) -> tuple[str, str | None]:
    location, colon, variable = target.rpartition(":")
    if colon and variable.isidentifier() and location:
        return location, variable
    return target, None


def _import(location: str) -> types.ModuleType:
    if location.endswith(".py") or os.sep in location or os.path.exists(location):
        return _import_file(location)
    try:
        spec = importlib.util.find_spec(location)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise TopologyError(f"no file or module named {location!r}")
    try:
        return importlib.import_module(location)
    except TopologyError:
        raise
    except Exception as error:
        raise UserCodeError(location) from error


def _import_file(path: str) -> types.ModuleType:
    if not os.path.isfile(path):
        raise TopologyError(f"no topology file {path!r}")
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)  # like `python file.py`: sibling modules import
    name = "flowgraph_topology_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except TopologyError:
        raise
    except Exception as error:
        raise UserCodeError(path) from error
    return module


def _topologies(module: types.ModuleType) -> dict[str, Topology]:
    """Topologies in ``module`` by their first name (one entry even if bound to two names)."""
    found: dict[str, Topology] = {}
    for name, value in vars(module).items():
        if isinstance(value, Topology) and all(value is not seen for seen in found.values()):
            found[name] = value
    return found


def _listing(module: types.ModuleType) -> str:
    names = sorted(_topologies(module))
    return f"; topologies there: {', '.join(names)}" if names else ""
