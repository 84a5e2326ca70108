"""The ``flowgraph`` command: parse arguments, call a function, map errors to exit codes.

Exit codes: 0 ok, 1 a node failed, 2 usage or topology error, 130 / 143
interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from .errors import FlowgraphError, RunInterrupted
from .loader import UserCodeError, load_topology
from .plan import describe_plan
from .report import RunReport
from .runner import run
from .worker import user_traceback


def run_command(
    target: str,
    *,
    inproc: bool = False,
    params: Mapping[str, str] | None = None,
    hwm: int | None = None,
    quiet: bool = False,
    metrics_json: str | None = None,
    hosts: str | None = None,
    ssh_config: str | None = None,
    remote_python: str | None = None,
    advertise: str | None = None,
) -> int:
    """``flowgraph run``: run the topology named by ``target``; returns the exit code."""
    with _errors_to_exit_codes() as outcome, _sigterm_interrupts():
        report = run(load_topology(target), inproc=inproc, params=params, hwm=hwm, hosts=hosts,
                     ssh_config=ssh_config, remote_python=remote_python, advertise=advertise)
        if not quiet:
            print(report.summary(), file=sys.stderr)
        if metrics_json:
            with open(metrics_json, "w", encoding="utf-8") as file:
                json.dump(_metrics(report), file, indent=2)
    return outcome.code


def check_command(target: str, hosts: str | None = None) -> int:
    """``flowgraph check``: validate the topology and print its plan; starts and contacts nothing."""
    with _errors_to_exit_codes() as outcome:
        print(describe_plan(load_topology(target).check(hosts=hosts)))
    return outcome.code


def worker_command() -> int:
    """``flowgraph worker``: run one replica configured on stdin (started by the launcher)."""
    from ._bootstrap import main as worker_main

    return worker_main()


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


def _metrics(report: RunReport) -> dict[str, Any]:
    return {
        "topology": report.topology,
        "mode": report.mode,
        "startup_s": report.startup_s,
        "wall_s": report.wall_s,
        "nodes": {
            node.name: {
                "kind": node.kind,
                "items_in": node.items_in,
                "items_out": node.items_out,
                "replicas": [asdict(replica) for replica in node.replicas],
            }
            for node in report
        },
    }


def _parse_params(parser: argparse.ArgumentParser, pairs: Sequence[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            parser.error(f"--set takes KEY=VALUE, not {pair!r}")
        params[key] = value
    return params


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowgraph",
        description="Run dataflow topologies: every node replica a process, wired by ZeroMQ.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run_parser = commands.add_parser("run", help="run a topology to its end")
    run_parser.add_argument("target", metavar="PATH[:VAR]",
                            help="a topology file or dotted module, optionally :VAR to pick one topology")
    run_parser.add_argument("--inproc", action="store_true",
                            help="run every replica as a thread of this process (for debugging)")
    run_parser.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE",
                            help="a parameter for the nodes, as context().params[KEY] (a string); repeatable")
    run_parser.add_argument("--hwm", type=_positive_int, metavar="N",
                            help="high-water mark of every data socket, in batches (default 8)")
    run_parser.add_argument("--quiet", action="store_true", help="do not print the summary table")
    run_parser.add_argument("--metrics-json", metavar="FILE",
                            help="write per node and replica counters to FILE as JSON")
    remote = run_parser.add_argument_group("remote hosts")
    remote.add_argument("--hosts", metavar="H1,H2,...|@FILE",
                        help="spread replicas over these ssh destinations ([user@]host[:port], or localhost "
                             "for this machine), dealt round robin; @FILE reads a hosts file")
    remote.add_argument("--ssh-config", metavar="FILE", help="passed to ssh as -F FILE")
    remote.add_argument("--remote-python", metavar="PATH",
                        help="the Python with flowgraph installed on the hosts (default python3)")
    remote.add_argument("--advertise", metavar="ADDR",
                        help="the address hosts use to reach this machine (default: as their ssh connection saw it)")

    check_parser = commands.add_parser("check", help="validate a topology and print its plan")
    check_parser.add_argument("target", metavar="PATH[:VAR]")
    check_parser.add_argument("--hosts", metavar="H1,H2,...|@FILE", help="show the placement over these hosts")

    commands.add_parser("worker", help=argparse.SUPPRESS)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.inproc and args.hosts:
        parser.error("--inproc runs every replica in this process; it cannot be combined with --hosts")
    if args.command == "worker":
        return worker_command()
    logging.basicConfig(level=logging.WARNING, format="flowgraph: %(levelname)s: %(message)s")
    if args.command == "check":
        return check_command(args.target, hosts=args.hosts)
    return run_command(
        args.target,
        inproc=args.inproc,
        params=_parse_params(parser, args.params),
        hwm=args.hwm,
        quiet=args.quiet,
        metrics_json=args.metrics_json,
        hosts=args.hosts,
        ssh_config=args.ssh_config,
        remote_python=args.remote_python,
        advertise=args.advertise,
    )
