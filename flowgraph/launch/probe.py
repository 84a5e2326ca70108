"""What a host is asked before any replica starts there, over ssh or as a Slurm step, and what its answer must say.

The probe is a short Python program run by the interpreter that will run
the workers; it prints one JSON line: its flowgraph and Python versions
(read from flowgraph's ``_version.py``, not imported: that takes half a second),
how it was reached (``SSH_CONNECTION``; Slurm's node name and the address
of the node that launched the step), and the address it reaches a given
address from (``argv[1]``: the launcher), which other hosts can use to
reach it.
"""

from __future__ import annotations

import sys
from typing import Any

from .._version import __version__

PROBE = r"""
import importlib.util, json, os, re, socket, sys
version = None
try:
    spec = importlib.util.find_spec("flowgraph")
    for name in ("_version.py", "__init__.py") if spec and spec.submodule_search_locations else ():
        path = os.path.join(spec.submodule_search_locations[0], name)
        found = os.path.exists(path) and re.search(r"__version__\s*=\s*\W([\w.+-]+)", open(path).read())
        if found:
            version = found[1]
            break
except (ImportError, OSError):
    pass
missing = [name for name in ("zmq", "cloudpickle", "msgpack", "setproctitle") if not importlib.util.find_spec(name)]
target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SLURM_LAUNCH_NODE_IPADDR", "")
address = ""
if target:
    try:
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.connect((target, 9))
            address = udp.getsockname()[0]
    except OSError:
        pass
print(json.dumps({"flowgraph": version, "missing": missing, "python": list(sys.version_info[:3]),
                  "ssh_connection": os.environ.get("SSH_CONNECTION", ""),
                  "slurm_node": os.environ.get("SLURMD_NODENAME", ""),
                  "launch_address": os.environ.get("SLURM_LAUNCH_NODE_IPADDR", ""),
                  "address": address}))
"""


def version_mismatch(where: str, python: str, answer: dict[str, Any]) -> str | None:
    """Why ``where`` cannot run this launcher's workers with ``python``, or None if it can."""
    mine = ".".join(map(str, sys.version_info[:2]))
    theirs = ".".join(map(str, answer["python"][:2]))
    if theirs != mine:
        return (f"{where} runs Python {theirs} at {python!r}, the launcher runs {mine}: "
                "node code travels pickled and needs the same Python version")
    if answer["flowgraph"] is None:
        return (f"{where} has no flowgraph for {python!r} (the launcher has {__version__}); "
                f"install flowgraph {__version__} there")
    if answer["flowgraph"] != __version__:
        return (f"{where} has flowgraph {answer['flowgraph']} for {python!r}, the launcher has "
                f"{__version__}; install flowgraph {__version__} there")
    if answer["missing"]:
        return (f"{where} has no flowgraph for {python!r} that can run: {', '.join(answer['missing'])} missing; "
                f"install flowgraph {__version__} there")
    return None


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
