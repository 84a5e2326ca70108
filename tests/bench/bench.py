"""flowgraph benchmarks: throughput, startup and memory, each as whole ``flowgraph run`` invocations.

Run with ``bin/bench`` (``--quick`` for a smoke run, ``--json`` for machine-readable output).
Throughput is the marginal rate (N_big - N_small) / (t_big - t_small), so startup and
shutdown are measured separately and not hidden in the rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import PeakRss  # noqa: E402  (tests/helpers.py, shared with the test suite)

PIPELINES = Path(__file__).with_name("pipelines.py")


@dataclass
class Run:
    seconds: float
    peak_rss_bytes: int
    startup_s: float
    """From launch to the start barrier (every replica connected and set up), as the run reports it."""


def flowgraph_run(variable: str, *options: str, **params: object) -> Run:
    """Run ``flowgraph run pipelines.py:variable`` and measure wall time and peak total RSS."""
    metrics = tempfile.NamedTemporaryFile(suffix=".json", delete=False)
    metrics.close()
    command = [sys.executable, "-m", "flowgraph", "run", "--quiet", "--metrics-json", metrics.name,
               f"{PIPELINES}:{variable}", *options]
    for key, value in params.items():
        command += ["--set", f"{key}={value}"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with PeakRss(process.pid) as rss:
            _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"benchmark run failed ({' '.join(command)}):\n{stderr.decode()}")
    startup_s = json.loads(Path(metrics.name).read_text())["startup_s"]
    os.unlink(metrics.name)
    return Run(seconds, rss.peak, startup_s)


def marginal_rate(mode_options: list[str], small: int, big: int, repeat: int) -> tuple[float, float]:
    """(items per second, seconds of the small run) as the best of ``repeat`` pairs."""
    best_rate, best_small = 0.0, float("inf")
    for _ in range(repeat):
        t_small = flowgraph_run("small_dicts", *mode_options, count=small).seconds
        t_big = flowgraph_run("small_dicts", *mode_options, count=big).seconds
        if t_big > t_small:
            best_rate = max(best_rate, (big - small) / (t_big - t_small))
        best_small = min(best_small, t_small)
    return best_rate, best_small


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the benchmark runs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--hosts", metavar="H1,H2,H3",
                        help="also measure over these hosts (e.g. made by bin/testhosts up 3)")
    parser.add_argument("--ssh-config", metavar="FILE", help="for --hosts")
    args = parser.parse_args()
    small, big = (1_000, 50_000) if args.quick else (10_000, 1_000_000)
    repeat = 1 if args.quick else 3
    stream = (200, 10_000, 0.0) if args.quick else (10_000, 100_000, 0.0001)
    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    for mode, options in (("local", []), ("inproc", ["--inproc"])):
        rate, startup = marginal_rate(options, small, big, repeat)
        results[f"{mode}_small_dicts_items_per_s"] = round(rate)
        results[f"{mode}_run_of_{small}_items_s"] = round(startup, 3)
    six_local = min((flowgraph_run("six_replicas") for _ in range(repeat)), key=lambda run: run.seconds)
    results["local_six_replicas_startup_s"] = round(six_local.startup_s, 3)
    results["local_six_replicas_run_s"] = round(six_local.seconds, 3)
    if args.hosts:
        remote = ["--hosts", args.hosts, "--remote-python", sys.executable,
                  *(["--ssh-config", args.ssh_config] if args.ssh_config else [])]
        six = min((flowgraph_run("six_replicas", *remote) for _ in range(repeat)), key=lambda run: run.seconds)
        results["hosts_six_replicas_startup_s"] = round(six.startup_s, 3)
        results["hosts_six_replicas_run_s"] = round(six.seconds, 3)
        rate, _ = marginal_rate(remote, small, big, repeat)
        results["hosts_small_dicts_items_per_s"] = round(rate)
    count, item_bytes, sleep_s = stream
    slow = flowgraph_run("slow_sink", count=count, item_bytes=item_bytes, sleep_s=sleep_s)
    results["slow_sink_stream_mb"] = count * item_bytes / 1e6
    results["slow_sink_peak_total_rss_mb"] = round(slow.peak_rss_bytes / 1e6, 1)
    results["slow_sink_seconds"] = round(slow.seconds, 2)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        width = max(map(len, results))
        for key, value in results.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
