"""The command line's arguments: the parsers, and ``run`` options filled from ``FLOWGRAPH_*`` variables."""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Sequence
from typing import Any

from .._version import __version__
from ..model.drawing import FORMATS

LOG_LEVELS = ("debug", "info", "warning", "error")


def prepare_run_arguments(parser: argparse.ArgumentParser, run_parser: argparse.ArgumentParser,
                          args: argparse.Namespace) -> None:
    """Fill ``run`` options from the environment, then reject combinations that cannot work."""
    _apply_environment(run_parser, args)
    if args.inproc and args.hosts:
        parser.error("--inproc runs every replica in this process; it cannot be combined with --hosts")
    if (args.slurm or args.slurm_args) and (args.inproc or args.hosts):
        parser.error("--slurm runs on the nodes of a Slurm allocation; it cannot be combined with "
                     f"{'--inproc' if args.inproc else '--hosts'}")
    if args.resume and args.checkpoint and os.path.abspath(args.resume) != os.path.abspath(args.checkpoint):
        parser.error("--resume DIR goes on checkpointing into DIR; it cannot be combined with another --checkpoint")


def parse_params(parser: argparse.ArgumentParser, pairs: Sequence[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            parser.error(f"--set takes KEY=VALUE, not {pair!r}")
        params[key] = value
    return params


def _env(name: str) -> str:
    return f"FLOWGRAPH_{name.upper().replace('-', '_')}"


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``run``; each help names the environment variable that can set it."""

    def option(name: str, help_text: str, **kwargs: Any) -> None:
        parser.add_argument(f"--{name}", help=f"{help_text} [env {_env(name)}]", **kwargs)

    option("inproc", "run every replica as a thread of this process (for debugging)", action="store_true")
    option("set", "a parameter for the nodes, as context().params[KEY] (a string); repeatable; the "
           "variable holds space-separated KEY=VALUE pairs", dest="params", action="append", default=[],
           metavar="KEY=VALUE")
    option("hwm", "high-water mark of every data socket, in batches (default 8)", type=_positive_int,
           metavar="N")
    option("restarts", "restart each replica that dies, freezes, fails or loses its host up to N times, "
           "delivering again what it had not fully processed (at least once; default 0: fail fast)",
           type=_non_negative_int, metavar="N")
    option("checkpoint", "take consistent checkpoints into DIR (with --restarts, a failure rolls back to the "
           "last one: exactly once for class state and SQLiteStore rows)", metavar="DIR")
    option("checkpoint-interval", "seconds between checkpoints (default 10)", type=_positive_float,
           metavar="SECONDS")
    option("resume", "continue the killed run whose checkpoints are in DIR, with the --set, hosts and restarts "
           "it was started with unless given again; keeps checkpointing into DIR", metavar="DIR")
    option("quiet", "no progress while running (the summary is still printed)", action="store_true")
    option("progress-interval", "print progress as plain lines every SECONDS (instead of the live table "
           "a terminal gets)", type=_positive_float, metavar="SECONDS")
    option("metrics-json", "write counters per node and replica, and how the run ended, to FILE",
           metavar="FILE")
    option("log-level", "log level of the launcher and of the workers (default warning)",
           choices=LOG_LEVELS, type=str.lower)
    remote = parser.add_argument_group("remote hosts")
    for name, help_text, metavar in (
        ("hosts", "spread replicas over these ssh destinations ([user@]host[:port], or localhost for this "
                  "machine), dealt round robin; @FILE reads a hosts file", "H1,H2,...|@FILE"),
        ("ssh-config", "passed to ssh as -F FILE", "FILE"),
        ("remote-python", "the Python with flowgraph installed on the hosts (default python3)", "PATH"),
        ("advertise", "the address hosts use to reach this machine (default: as their ssh connection saw it)",
         "ADDR"),
    ):
        remote.add_argument(f"--{name}", help=f"{help_text} [env {_env(name)}]", metavar=metavar)
    slurm = parser.add_argument_group("Slurm")
    slurm.add_argument("--slurm", action="store_true",
                       help="run on the nodes of the Slurm allocation this runs in (sbatch, salloc), a job step "
                            "per node; --remote-python names the nodes' Python (default: this one) "
                            f"[env {_env('slurm')}]")
    slurm.add_argument("--slurm-args", metavar="ARGS",
                       help='ask Slurm for an allocation with these salloc options ("-N 3 -p debug -t 1:00:00"), run '
                            f"in it and release it at the end (implies --slurm) [env {_env('slurm-args')}]")


def _apply_environment(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill options not given on the command line from ``FLOWGRAPH_*`` variables."""
    for action in parser._actions:  # argparse offers no public iteration over options
        if not action.option_strings or action.dest == "help":
            continue
        name = action.option_strings[0][2:]
        text = os.environ.get(_env(name))
        if text is None:
            continue
        current = getattr(args, action.dest)
        if action.dest == "params":
            args.params = [*shlex.split(text), *current]
        elif isinstance(action, argparse._StoreTrueAction):
            if not current:
                setattr(args, action.dest, _boolean(parser, _env(name), text))
        elif current is None:
            try:
                value = action.type(text) if action.type else text  # type: ignore[operator]
            except (ValueError, argparse.ArgumentTypeError) as error:
                parser.error(f"{_env(name)}={text!r}: {error}")
            if action.choices is not None and value not in action.choices:
                parser.error(f"{_env(name)}={text!r}: expected one of {', '.join(map(str, action.choices))}")
            setattr(args, action.dest, value)


def _boolean(parser: argparse.ArgumentParser, variable: str, text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("", "0", "false", "no", "off"):
        return False
    parser.error(f"{variable}={text!r}: expected 1/true/yes/on or 0/false/no/off")
    raise AssertionError("unreachable")


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The parser of ``flowgraph``, and the one of ``flowgraph run`` (for the environment)."""
    parser = argparse.ArgumentParser(
        prog="flowgraph",
        description="Run dataflow topologies: every node replica a process, wired by ZeroMQ.",
    )
    parser.add_argument("--version", action="version", version=f"flowgraph {__version__}",
                        help="print the version (every host of a run must have the same) and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run_parser = commands.add_parser(
        "run", help="run a topology to its end",
        description="Run a topology to its end. Exit status: 0 done, 1 a node failed, 2 a bad topology "
                    "or usage, 130/143 interrupted. Every option can also come from the environment "
                    "variable shown in [env ...]; the command line wins.")
    run_parser.add_argument("target", metavar="PATH[:VAR]",
                            help="a topology file or dotted module, optionally :VAR to pick one topology")
    _add_run_options(run_parser)

    check_parser = commands.add_parser("check", help="validate a topology and print its plan")
    check_parser.add_argument("target", metavar="PATH[:VAR]")
    check_parser.add_argument("--hosts", metavar="H1,H2,...|@FILE", help="show the placement over these hosts")
    check_parser.add_argument("--slurm", action="store_true",
                              help="show the placement over the nodes of the Slurm allocation this runs in")
    check_parser.add_argument("--restarts", metavar="N", type=_non_negative_int,
                              help="plan as run --restarts N would: each node's restart budget, acknowledged edges")

    graph_parser = commands.add_parser("graph", help="draw a topology (.dot, .mmd or .svg)")
    graph_parser.add_argument("target", metavar="PATH[:VAR]")
    graph_parser.add_argument("-o", "--output", required=True, metavar="FILE",
                              help=f"the picture to write; its suffix ({', '.join(FORMATS)}) picks the format; "
                                   "SVG needs Graphviz's dot")

    return parser, run_parser


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value
