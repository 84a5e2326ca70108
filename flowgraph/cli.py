"""The ``flowgraph`` command: parse arguments, call a function, map errors to exit codes.

Exit codes: 0 ok, 1 a node failed, 2 usage or topology error, 130 / 143
interrupted by SIGINT / SIGTERM. Every ``run`` option can also come from the
environment (``FLOWGRAPH_HOSTS``, ``FLOWGRAPH_HWM``, ...); the command line
wins.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from .drawing import FORMATS, draw
from .errors import FlowgraphError, RunFailed, RunInterrupted
from .loader import UserCodeError, load_topology
from .plan import Plan, describe_plan
from .report import RunReport
from .runner import Progress, run
from .worker import user_traceback

LOG_LEVELS = ("debug", "info", "warning", "error")


def run_command(
    target: str,
    *,
    inproc: bool = False,
    params: Mapping[str, str] | None = None,
    hwm: int | None = None,
    quiet: bool = False,
    progress_interval: float | None = None,
    metrics_json: str | None = None,
    log_level: str = "warning",
    hosts: str | None = None,
    ssh_config: str | None = None,
    remote_python: str | None = None,
    advertise: str | None = None,
) -> int:
    """``flowgraph run``: run the topology named by ``target``; returns the exit code.

    Progress: a live table on a terminal, lines every ``progress_interval``
    seconds if given, nothing with ``quiet``. The summary table is always
    printed at the end; ``metrics_json`` is written also when the run fails.
    """
    level = getattr(logging, log_level.upper())
    logging.getLogger("flowgraph").setLevel(level)
    report: RunReport | None = None
    stopped: RunFailed | RunInterrupted | None = None
    with _errors_to_exit_codes() as outcome, _sigterm_interrupts():
        try:
            report = run(load_topology(target), inproc=inproc, params=params, hwm=hwm, hosts=hosts,
                         ssh_config=ssh_config, remote_python=remote_python, advertise=advertise,
                         log_level=level, progress=_progress(quiet, progress_interval))
        except (RunFailed, RunInterrupted) as caught:
            report, stopped = caught.report, caught
            raise
        finally:
            if report is not None:
                print(report.summary(), file=sys.stderr)
                if metrics_json:
                    write_metrics(report, metrics_json, stopped)
    return outcome.code


def check_command(target: str, hosts: str | None = None) -> int:
    """``flowgraph check``: validate the topology and print its plan; starts and contacts nothing."""
    with _errors_to_exit_codes() as outcome:
        print(describe_plan(load_topology(target).check(hosts=hosts)))
    return outcome.code


def graph_command(target: str, output: str) -> int:
    """``flowgraph graph``: draw the topology into ``output`` (.dot, .mmd or .svg)."""
    with _errors_to_exit_codes() as outcome:
        draw(load_topology(target).check(), output)
        print(f"wrote {output}", file=sys.stderr)
    return outcome.code


def worker_command() -> int:
    """``flowgraph worker``: run one replica configured on stdin (started by the launcher)."""
    from ._bootstrap import main as worker_main

    return worker_main()


def _progress(quiet: bool, interval_s: float | None) -> Callable[[Plan], Progress] | None:
    if quiet:
        return None
    if interval_s is not None:
        from .progress import ProgressLines

        return lambda plan: ProgressLines(plan, interval_s)
    if sys.stderr.isatty():
        from .progress import LiveTable

        return lambda plan: LiveTable(plan, f"flowgraph: {plan.topology}")
    return None


def write_metrics(report: RunReport, path: str, stopped: RunFailed | RunInterrupted | None = None) -> None:
    """``--metrics-json``: counters per node and replica, and how the run ended (a stable format)."""
    if isinstance(stopped, RunInterrupted):
        status = "interrupted"
    elif stopped is not None:
        status = "failed"
    else:
        status = "ok"
    data = {
        "format": "flowgraph-metrics/1",
        "topology": report.topology,
        "mode": report.mode,
        "status": status,
        "error": None if stopped is None else str(stopped.args[0]),
        "startup_s": report.startup_s,
        "wall_s": report.wall_s,
        "nodes": {
            node.name: {
                "kind": node.kind,
                "parallelism": node.parallelism,
                "items_in": node.items_in,
                "items_out": node.items_out,
                "replicas": [asdict(replica) for replica in node.replicas],
            }
            for node in report
        },
    }
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)


class _Outcome:
    code = 0


@contextmanager
def _errors_to_exit_codes() -> Iterator[_Outcome]:
    outcome = _Outcome()
    try:
        yield outcome
    except UserCodeError as error:
        assert error.__cause__ is not None
        print(f"flowgraph: error: importing {error.target} raised:", file=sys.stderr)
        print(user_traceback(error.__cause__), end="", file=sys.stderr)
        outcome.code = 2
    except FlowgraphError as error:
        print(f"flowgraph: error: {error}", file=sys.stderr)
        outcome.code = error.exit_code
    except KeyboardInterrupt:
        print("flowgraph: interrupted", file=sys.stderr)
        outcome.code = 128 + signal.SIGINT


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into ``RunInterrupted`` so the launcher stops every replica in order."""

    def interrupt(signum: int, frame: Any) -> None:
        raise RunInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parse_params(parser: argparse.ArgumentParser, pairs: Sequence[str]) -> dict[str, str]:
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
            setattr(args, "params", [*shlex.split(text), *current])
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

    graph_parser = commands.add_parser("graph", help="draw a topology (.dot, .mmd or .svg)")
    graph_parser.add_argument("target", metavar="PATH[:VAR]")
    graph_parser.add_argument("-o", "--output", required=True, metavar="FILE",
                              help=f"the picture to write; its suffix ({', '.join(FORMATS)}) picks the format; "
                                   "SVG needs Graphviz's dot")

    commands.add_parser("worker", help=argparse.SUPPRESS)
    return parser, run_parser


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


def main(argv: Sequence[str] | None = None) -> int:
    parser, run_parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "worker":
        return worker_command()
    logging.basicConfig(level=logging.WARNING, format="flowgraph: %(levelname)s: %(message)s")
    if args.command == "check":
        return check_command(args.target, hosts=args.hosts)
    if args.command == "graph":
        return graph_command(args.target, args.output)
    _apply_environment(run_parser, args)
    if args.inproc and args.hosts:
        parser.error("--inproc runs every replica in this process; it cannot be combined with --hosts")
    return run_command(
        args.target,
        inproc=args.inproc,
        params=_parse_params(parser, args.params),
        hwm=args.hwm,
        quiet=args.quiet,
        progress_interval=args.progress_interval,
        metrics_json=args.metrics_json,
        log_level=args.log_level or "warning",
        hosts=args.hosts,
        ssh_config=args.ssh_config,
        remote_python=args.remote_python,
        advertise=args.advertise,
    )
