"""The ``flowgraph`` command: each verb a plain function, argparse only parses."""

from .commands import check_command as check_command
from .commands import graph_command as graph_command
from .commands import main as main
from .commands import run_command as run_command

__all__ = ["check_command", "graph_command", "main", "run_command"]
