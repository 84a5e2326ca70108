"""The ``flowgraph`` command: parse arguments, call a function, map errors to exit codes.

Exit codes: 0 ok, 1 a node failed, 2 usage or topology error, 130 / 143
interrupted by SIGINT / SIGTERM. Every ``run`` option can also come from the
environment (``FLOWGRAPH_HOSTS``, ``FLOWGRAPH_HWM``, ...); the command line
wins.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from ..errors import AllocationEnded, FlowgraphError, RunFailed, RunInterrupted, user_traceback
from ..launch.runner import Progress, run
from ..launch.slurm import allocation_of, check_pins
from ..model.drawing import draw
from ..model.plan import Plan, describe_plan
from ..model.report import RunReport
from .arguments import build_parser, parse_params, prepare_run_arguments
from .loader import UserCodeError, load_topology


def run_command(
    target: str,
    *,
    inproc: bool = False,
    params: Mapping[str, str] | None = None,
    hwm: int | None = None,
    restarts: int | None = None,
    checkpoint: str | None = None,
    checkpoint_interval_s: float | None = None,
    resume: str | None = None,
    quiet: bool = False,
    progress_interval: float | None = None,
    metrics_json: str | None = None,
    log_level: str = "warning",
    hosts: str | None = None,
    ssh_config: str | None = None,
    remote_python: str | None = None,
    advertise: str | None = None,
    slurm: bool = False,
    slurm_args: str | None = None,
) -> int:
    """``flowgraph run``: run the topology named by ``target``; returns the exit code.

    Progress: a live table on a terminal, lines every ``progress_interval``
    seconds if given, nothing with ``quiet``. The summary table is always
    printed at the end; ``metrics_json`` is written also when the run fails.
    ``resume`` (a checkpoint directory) continues the run kept there.
    """
    level = getattr(logging, log_level.upper())
    logging.getLogger("flowgraph").setLevel(level)
    report: RunReport | None = None
    stopped: RunFailed | RunInterrupted | AllocationEnded | None = None
    with _errors_to_exit_codes() as outcome, _sigterm_interrupts():
        try:
            report = run(load_topology(target), inproc=inproc, params=params, hwm=hwm, restarts=restarts, hosts=hosts,
                         ssh_config=ssh_config, remote_python=remote_python, advertise=advertise,
                         log_level=level, progress=_progress(quiet, progress_interval),
                         checkpoint=resume or checkpoint, checkpoint_interval_s=checkpoint_interval_s,
                         resume=resume is not None, slurm=slurm, slurm_args=slurm_args)
        except (RunFailed, RunInterrupted, AllocationEnded) as caught:
            report, stopped = caught.report, caught
            raise
        finally:
            if report is not None:
                print(report.summary(), file=sys.stderr)
                if metrics_json:
                    write_metrics(report, metrics_json, stopped)
    return outcome.code


def check_command(target: str, hosts: str | None = None, restarts: int = 0, slurm: bool = False) -> int:
    """``flowgraph check``: validate the topology and print its plan; starts and contacts nothing.

    ``restarts`` plans as ``run --restarts`` would (restart budgets, acknowledged edges); ``slurm``
    places the replicas over the nodes of the Slurm allocation this runs in.
    """
    with _errors_to_exit_codes() as outcome:
        topology = load_topology(target)
        if slurm:
            allocation = allocation_of(os.environ)
            plan = topology.check(hosts=allocation.hosts, restarts=restarts)
            check_pins(plan, allocation)
        else:
            plan = topology.check(hosts=hosts, restarts=restarts)
        print(describe_plan(plan))
    return outcome.code


def graph_command(target: str, output: str) -> int:
    """``flowgraph graph``: draw the topology into ``output`` (.dot, .mmd or .svg)."""
    with _errors_to_exit_codes() as outcome:
        draw(load_topology(target).check(), output)
        print(f"wrote {output}", file=sys.stderr)
    return outcome.code


def worker_command() -> int:
    """``flowgraph worker``: run one replica configured on stdin (started by the launcher, never by hand)."""
    from ..runtime.bootstrap import main as worker_main

    return worker_main()


def forkserver_command() -> int:
    """``flowgraph forkserver``: the template the launcher forks a host's replicas from (never by hand)."""
    from ..runtime.forkserver import main as forkserver_main

    return forkserver_main()


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


def write_metrics(report: RunReport, path: str,
                  stopped: RunFailed | RunInterrupted | AllocationEnded | None = None) -> None:
    """``--metrics-json``: counters per node and replica, and how the run ended (a stable format)."""
    data = {
        "format": "flowgraph-metrics/1",
        "topology": report.topology,
        "mode": report.mode,
        "status": report.status,
        "guarantee": report.guarantee,
        "error": None if stopped is None else str(stopped.args[0]),
        "startup_s": report.startup_s,
        "wall_s": report.wall_s,
        "checkpoints_s": list(report.checkpoints_s),
        "nodes": {
            node.name: {
                "kind": node.kind,
                "parallelism": node.parallelism,
                "items_in": node.items_in,
                "items_out": node.items_out,
                "errors": node.errors,
                "retries": node.retries,
                "skipped": node.skipped,
                "dead_lettered": node.dead_lettered,
                "restarts": node.restarts,
                "replayed": node.replayed,
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


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["worker"]:  # the launcher's own verbs: not offered in --help
        return worker_command()
    if arguments[:1] == ["forkserver"]:
        return forkserver_command()
    parser, run_parser = build_parser()
    args = parser.parse_args(arguments)
    logging.basicConfig(level=logging.WARNING, format="flowgraph: %(levelname)s: %(message)s")
    if args.command == "check":
        if args.slurm and args.hosts:
            parser.error("--slurm places replicas over the allocation's nodes; it cannot be combined with --hosts")
        return check_command(args.target, hosts=args.hosts, restarts=args.restarts or 0, slurm=args.slurm)
    if args.command == "graph":
        return graph_command(args.target, args.output)
    prepare_run_arguments(parser, run_parser, args)
    return run_command(
        args.target,
        inproc=args.inproc,
        params=parse_params(parser, args.params),
        hwm=args.hwm,
        restarts=args.restarts,
        checkpoint=args.checkpoint,
        checkpoint_interval_s=args.checkpoint_interval,
        resume=args.resume,
        quiet=args.quiet,
        progress_interval=args.progress_interval,
        metrics_json=args.metrics_json,
        log_level=args.log_level or "warning",
        hosts=args.hosts,
        ssh_config=args.ssh_config,
        remote_python=args.remote_python,
        advertise=args.advertise,
        slurm=args.slurm,
        slurm_args=args.slurm_args,
    )
