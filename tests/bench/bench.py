"""flowgraph's benchmarks, beside hand-written pyzmq and multiprocessing pipelines, in one run.

Run with ``bin/bench`` (``--quick`` for a smoke run, ``--json`` for machine-readable
output, ``--hosts h1,h2,h3 --ssh-config FILE`` to add runs over hosts, ``--slurm "-N 3"``
to add runs over a Slurm cluster). Every figure
comes from whole command invocations; throughput is the marginal rate
(N_big - N_small) / (t_big - t_small), best of ``--repeat``, so startup is measured on
its own and not hidden in the rate. The machine is noisy: compare ratios within one run,
where the runs of compared pipelines are taken in turns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from helpers import PeakRss  # noqa: E402  (tests/helpers.py, shared with the test suite)
from nodes.site import serve  # noqa: E402
from website import generate_site  # noqa: E402  (tests/website.py)

PIPELINES = HERE / "pipelines.py"
CRAWLING = HERE / "crawling.py"
BASELINES = HERE / "baselines.py"


@dataclass
class Run:
    seconds: float
    peak_rss_bytes: int | None
    """Only when asked for: sampling every process's RSS costs CPU the pipeline would otherwise have."""
    startup_s: float | None
    checkpoints_s: tuple[float, ...] = ()
    """How long each checkpoint took (a run with ``--checkpoint``)."""
    wall_s: float | None = None
    """The run's own wall time, from its launch to its end (``--metrics-json``), without the interpreter's start."""


def timed(command: list[str], rss: bool = False) -> Run:
    """Run ``command`` to its end: wall time and, if ``rss``, the peak summed RSS of it and its children."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with PeakRss(process.pid) if rss else contextlib.nullcontext() as sampler:
            _, stderr = process.communicate(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
    if process.returncode != 0:
        raise SystemExit(f"benchmark run failed ({' '.join(command)}):\n{stderr.decode()}")
    return Run(time.perf_counter() - started, sampler.peak if sampler else None, None)


def flowgraph(variable: str, *options: str, rss: bool = False, file: Path = PIPELINES, **params: object) -> Run:
    """``flowgraph run pipelines.py:variable`` (or ``file``'s), with its reported startup time."""
    with tempfile.TemporaryDirectory() as directory:
        metrics = Path(directory) / "metrics.json"
        command = [sys.executable, "-m", "flowgraph", "run", "--quiet", "--metrics-json", str(metrics),
                   f"{file}:{variable}", *options]
        for key, value in params.items():
            command += ["--set", f"{key}={value}"]
        run = timed(command, rss)
        written = json.loads(metrics.read_text())
        run.startup_s, run.checkpoints_s = written["startup_s"], tuple(written["checkpoints_s"])
        run.wall_s = written["wall_s"]
        return run


def baseline(kind: str, *args: object) -> Run:
    return timed([sys.executable, str(BASELINES), kind, *map(str, args)])


def side_by_side(pipelines: dict[str, tuple[Any, int, int]], repeat: int) -> dict[str, float]:
    """Marginal rates of several pipelines, {name: (make, small, big)}, their runs taken in turns.

    The machine's speed drifts over minutes; running the pipelines in turns
    lets a drift hit all of them alike, so their ratios hold.
    """
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in pipelines}
    for _ in range(repeat):
        for name, (make, small, big) in pipelines.items():
            times[name][0].append(make(small).seconds)
            times[name][1].append(make(big).seconds)
    rates = {}
    for name, (_, small, big) in pipelines.items():
        t_small, t_big = min(times[name][0]), min(times[name][1])
        rates[name] = (big - small) / (t_big - t_small) if t_big > t_small else float("nan")
    return rates


def percentile(values: tuple[float, ...], rank: float) -> float:
    """The ``rank``-th percentile of ``values`` (nearest rank); nan if there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(rank / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Crawled:
    """One crawl: the pages stored, the seconds from the start barrier to the end, the CPU seconds of the whole run
    (launcher and workers)."""

    pages: int
    seconds: float
    cpu_s: float


def crawl(concurrency: int, url: str, db: Path) -> Crawled:
    """``crawling.py:crawl_c<concurrency>`` of the site at ``url`` into ``db``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = flowgraph(f"crawl_c{concurrency}", file=CRAWLING, url=url, db=db)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with contextlib.closing(sqlite3.connect(db)) as connection:
        (pages,) = connection.execute("SELECT count(*) FROM pages").fetchone()
    cpu_s = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Crawled(pages, (run.wall_s or run.seconds) - (run.startup_s or 0.0), cpu_s)


def crawl_rates(directory: Path, sizes: tuple[int, int], repeat: int) -> dict[int, tuple[float, float]]:
    """Per concurrency (1 and 32): (pages per second, CPU ms per page), both marginal between a small and a big
    generated site whose server adds 50 ms to every response; best of ``repeat``, the concurrencies in turns
    (NaN and infinity when no run told the sizes apart)."""
    servers = []
    for size in sizes:
        generate_site(directory / f"site-{size}", size, seed=14)
        servers.append(serve(directory / f"site-{size}", delay_s=0.05))
    try:
        best: dict[int, tuple[float, float]] = {1: (0.0, math.inf), 32: (0.0, math.inf)}
        for attempt in range(repeat):
            for concurrency, (rate, cpu_ms) in best.items():
                small, big = (crawl(concurrency, server.url, directory / f"{attempt}-{concurrency}-{index}.db")
                              for index, server in enumerate(servers))
                pages, seconds = big.pages - small.pages, big.seconds - small.seconds
                if pages > 0 and seconds > 0:  # else too short to tell apart (a quick run): nothing measured
                    best[concurrency] = (max(rate, pages / seconds),
                                         min(cpu_ms, (big.cpu_s - small.cpu_s) / pages * 1000))
        return {concurrency: (rate or math.nan, cpu_ms) for concurrency, (rate, cpu_ms) in best.items()}
    finally:
        for server in servers:
            server.close()


def resume_time(directory: Path) -> float:
    """Kill the process group of a checkpointed run after its second checkpoint, resume it: seconds from the
    resume's launch to its first processed item."""
    out, checkpoints = directory / "out", directory / "ckpt"
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "flowgraph", "run", "--quiet", f"{PIPELINES}:keyed_count", "--set",
               "count=100000000", "--set", "pause_every=100"]
    first = subprocess.Popen([*command, "--checkpoint", str(checkpoints), "--checkpoint-interval", "0.5"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(checkpoints.glob("ckpt-*/MANIFEST.json"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    for path in out.iterdir():
        path.unlink()
    launched = time.time()
    resumed = subprocess.Popen([*command, "--resume", str(checkpoints), "--set", f"out={out}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.005)
        firsts = [float(path.read_text() or "inf") for path in out.iterdir()]
    finally:
        os.killpg(resumed.pid, signal.SIGKILL)
        resumed.wait()
    return min(firsts, default=float("nan")) - launched


def first_item(variable: str, *options: str, repeat: int) -> tuple[float, float]:
    """Best of ``repeat``: seconds from the command's start to the first item at the sink, and to its end."""
    best_first, best_run = float("inf"), float("inf")
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "first.json"
        for _ in range(repeat):
            launched = time.time()
            run = flowgraph(variable, *options, out=out)
            best_first = min(best_first, json.loads(out.read_text())["first_item_at"] - launched)
            best_run = min(best_run, run.seconds)
    return best_first, best_run


def idle_memory(variable: str) -> tuple[float, float, float]:
    """Of a local run whose replicas all wait: the mean RSS and USS of a replica, and its forkserver's RSS (MB)."""
    with tempfile.TemporaryDirectory() as directory:
        out, hold = Path(directory) / "first.json", Path(directory) / "hold"
        command = [sys.executable, "-m", "flowgraph", "run", "--quiet", f"{PIPELINES}:{variable}",
                   "--set", f"out={out}", "--set", f"hold={hold}"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not out.exists() and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.05)
            time.sleep(1.0)  # the items have gone through; let the replicas settle into waiting
            (template,) = psutil.Process(process.pid).children()
            replicas = template.children()
            rss = sum(replica.memory_info().rss for replica in replicas) / len(replicas)
            uss = sum(replica.memory_full_info().uss for replica in replicas) / len(replicas)
            return rss / 1e6, uss / 1e6, template.memory_info().rss / 1e6
        finally:
            hold.touch()
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def measure(args: argparse.Namespace) -> dict[str, object]:
    quick, repeat = args.quick, args.repeat
    small, big = (2_000, 60_000) if quick else (20_000, 2_000_000)
    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }

    def record(key: str, value: float, digits: int = 0) -> float:
        """Keep a figure; a run too short to measure (quick mode on a noisy machine) gives None."""
        if not math.isfinite(value):
            results[key] = None
        else:
            results[key] = round(value, digits) if digits else round(value)
        return value

    def beside_local(name: str, options: list[str]) -> None:
        """Small dicts with ``options`` (over hosts, over Slurm) and locally, in turns."""
        rates = side_by_side({
            name: (lambda n: flowgraph("small_dicts", *options, count=n), small, big),
            "local": (lambda n: flowgraph("small_dicts", count=n), small, big),
        }, repeat)
        record(f"{name}_flowgraph_items_per_s", rates[name])
        record(f"{name}_ratio_to_local", rates[name] / rates["local"], 2)

    # Small dicts through source -> map -> sink.
    rates = side_by_side({
        "local": (lambda n: flowgraph("small_dicts", count=n), small, big),
        "inproc": (lambda n: flowgraph("small_dicts", "--inproc", count=n), small, big),
        "batched": (lambda n: baseline("zmq-batched", n), small, big),
        "per_item": (lambda n: baseline("zmq-items", n), small, big // 4),
        "queue": (lambda n: baseline("mp-queue", n), small // 2, big // 10),
    }, repeat)
    local = record("flowgraph_items_per_s", rates["local"])
    record("flowgraph_inproc_items_per_s", rates["inproc"])
    batched = record("pyzmq_batched_items_per_s", rates["batched"])
    per_item = record("pyzmq_per_item_items_per_s", rates["per_item"])
    queue = record("mp_queue_items_per_s", rates["queue"])
    record("ratio_to_pyzmq_batched", local / batched, 2)
    record("ratio_to_pyzmq_per_item", local / per_item, 2)
    record("ratio_to_mp_queue", local / queue, 2)

    # 1 MiB items.
    size = 1 << 20
    count_small, count_big = (20, 200) if quick else (200, 4000)
    rates = side_by_side({
        "flowgraph": (lambda n: flowgraph("big_items", count=n, size=size), count_small, count_big),
        "raw": (lambda n: baseline("zmq-bytes", n, size), count_small, count_big),
    }, repeat)
    record("flowgraph_1mib_mb_per_s", rates["flowgraph"] * size / 1e6)
    record("pyzmq_zero_copy_1mib_mb_per_s", rates["raw"] * size / 1e6)
    record("ratio_1mib_to_pyzmq_zero_copy", rates["flowgraph"] / rates["raw"], 2)

    # Latency at a low rate (the run with the best p99 of ``repeat``), beside hand-written pyzmq, in turns.
    count = 200 if quick else 2500
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "latency.json"
        ours, theirs = [], []
        for _ in range(repeat):
            flowgraph("latency", rate=500, count=count, out=out)
            ours.append(json.loads(out.read_text()))
            theirs.append(json.loads(subprocess.run(
                [sys.executable, str(BASELINES), "zmq-latency", str(count), "500"],
                check=True, capture_output=True, text=True, timeout=300).stdout))
    latency = min(ours, key=lambda figures: figures["p99_ms"])
    raw = min(theirs, key=lambda figures: figures["p99_ms"])
    record("latency_p50_ms_at_500_per_s", latency["p50_ms"], 3)
    record("latency_p99_ms_at_500_per_s", latency["p99_ms"], 3)
    record("pyzmq_latency_p50_ms_at_500_per_s", raw["p50_ms"], 3)
    record("pyzmq_latency_p99_ms_at_500_per_s", raw["p99_ms"], 3)

    # Memory under a slow sink, for two stream lengths.
    item_bytes = 100_000
    for label, count in (("1gb", 500 if quick else 10_000), ("4gb", 2_000 if quick else 40_000)):
        run = flowgraph("slow_sink", rss=True, count=count, item_bytes=item_bytes, sleep_s=0.0001)
        record(f"slow_sink_{label}_stream_mb", count * item_bytes / 1e6)
        record(f"slow_sink_{label}_peak_total_rss_mb", (run.peak_rss_bytes or 0) / 1e6, 1)
    record("slow_sink_rss_growth_4x_stream", results["slow_sink_4gb_peak_total_rss_mb"]  # type: ignore[operator]
           / results["slow_sink_1gb_peak_total_rss_mb"], 3)  # type: ignore[operator]

    # Scaling a CPU-bound map over two replicas: marginal rates, so startup does not dilute the ratio.
    work, (few, many) = (200, (200, 1_000)) if quick else (20_000, (400, 4_000))
    rates = side_by_side({
        "one": (lambda n: flowgraph("cpu_p1", count=n, work=work), few, many),
        "two": (lambda n: flowgraph("cpu_p2", count=n, work=work), few, many),
    }, repeat)
    record("scaling_parallelism_2_vs_1", rates["two"] / rates["one"], 2)

    # Restarts on and no faults: what acknowledgements and kept batches cost, beside the same pipeline without.
    rates = side_by_side({
        "plain": (lambda n: flowgraph("small_dicts", count=n), small, big),
        "restarts": (lambda n: flowgraph("small_dicts", "--restarts", "1", count=n), small, big),
    }, repeat)
    record("restarts_small_dicts_items_per_s", rates["restarts"])
    record("restarts_ratio_to_plain", rates["restarts"] / rates["plain"], 2)
    count = 500 if quick else 10_000
    run = flowgraph("slow_sink", "--restarts", "1", rss=True, count=count, item_bytes=item_bytes, sleep_s=0.0001)
    record("restarts_slow_sink_1gb_peak_total_rss_mb", (run.peak_rss_bytes or 0) / 1e6, 1)

    # Recovery: from a SIGKILL of a middle replica to its next incarnation's first processed item.
    recoveries = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as directory:
            flowgraph("recovery", "--restarts", "1", count=20_000 if quick else 200_000, out=directory)
            times = {name: float((Path(directory) / name).read_text()) for name in ("killed", "restarted")}
            recoveries.append(times["restarted"] - times["killed"])
    record("recovery_s_after_sigkill_of_a_middle_replica", min(recoveries), 3)

    # Checkpoints: a keyed class counter checkpointed every second, beside the same pipeline without.
    with tempfile.TemporaryDirectory() as directory:
        checkpointed = ("--checkpoint", str(Path(directory) / "ckpt"), "--checkpoint-interval", "1")
        rates = side_by_side({
            "plain": (lambda n: flowgraph("keyed_count", count=n), small, big),
            "checkpoints": (lambda n: flowgraph("keyed_count", *checkpointed, count=n), small, big),
        }, repeat)
        record("checkpoints_keyed_count_items_per_s", rates["checkpoints"])
        record("checkpoints_ratio_to_plain", rates["checkpoints"] / rates["plain"], 2)
        fast = ("--checkpoint", str(Path(directory) / "fast"), "--checkpoint-interval", "0.2")
        durations = flowgraph("keyed_count", *fast, count=big).checkpoints_s
        record("checkpoint_s_p50_full_speed", percentile(durations, 50), 3)
        record("checkpoint_s_p99_full_speed", percentile(durations, 99), 3)
        slow = ("--checkpoint", str(Path(directory) / "slow"), "--checkpoint-interval", "0.2")
        durations = flowgraph("keyed_count", *slow, count=5_000 if quick else 150_000, forward=1,
                              sleep_s=0.0001).checkpoints_s
        record("checkpoint_s_p50_slow_sink", percentile(durations, 50), 3)
        record("checkpoint_s_p99_slow_sink", percentile(durations, 99), 3)
        record("resume_s_to_first_item", min(resume_time(Path(directory) / f"resume-{n}") for n in range(repeat)), 3)

    # Crawling generated sites whose server adds 50 ms to every response, following links: 1 and 32 requests in
    # flight per fetch replica (2 fetch replicas, 2 analyze), marginal between two site sizes.
    with tempfile.TemporaryDirectory() as directory:
        crawled = crawl_rates(Path(directory), (20, 40) if quick else (150, 900), repeat)
        record("crawl_pages_per_s_concurrency_1", crawled[1][0], 1)
        record("crawl_pages_per_s_concurrency_32", crawled[32][0], 1)
        record("crawl_speedup_32_vs_1", crawled[32][0] / crawled[1][0], 1)
        record("crawl_cpu_ms_per_page_concurrency_1", crawled[1][1], 2)
        record("crawl_cpu_ms_per_page_concurrency_32", crawled[32][1], 2)

    # Startup: 5 nodes, 8 replicas.
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "first.json"
        best_first, best_run = float("inf"), float("inf")
        for _ in range(repeat):
            launched = time.time()
            run = flowgraph("five_nodes", out=out)
            best_first = min(best_first, json.loads(out.read_text())["first_item_at"] - launched)
            best_run = min(best_run, run.seconds)
    record("five_nodes_first_item_s", best_first, 3)
    record("five_nodes_whole_run_s", best_run, 3)

    # Many replicas: startup to the first item at the sink and the whole short run, from the command's start.
    for replicas in (8, 32, 128):
        first, whole = first_item(f"wide_{replicas}", repeat=repeat)
        record(f"replicas_{replicas}_first_item_s", first, 3)
        record(f"replicas_{replicas}_whole_run_s", whole, 3)
    first, whole = first_item("dense_128", repeat=repeat)  # two wide nodes: 63 x 63 socket pairs
    record("replicas_128_two_wide_nodes_first_item_s", first, 3)
    record("replicas_128_two_wide_nodes_whole_run_s", whole, 3)
    rss, uss, template_rss = idle_memory("wide_128")
    record("idle_replica_rss_mb", rss, 1)
    record("idle_replica_uss_mb", uss, 1)
    record("forkserver_rss_mb", template_rss, 1)

    if args.slurm:
        slurm = ["--slurm-args", args.slurm]
        first, whole = first_item("wide_48", *slurm, repeat=repeat)
        local_first, local_whole = first_item("wide_48", repeat=repeat)
        record("local_48_replicas_whole_run_s", local_whole, 3)
        record("slurm_48_replicas_first_item_s", first, 3)
        record("slurm_48_replicas_whole_run_s", whole, 3)
        record("local_48_replicas_first_item_s", local_first, 3)
        beside_local("slurm", slurm)

    if args.hosts:
        remote = ["--hosts", args.hosts, "--remote-python", sys.executable,
                  *(["--ssh-config", args.ssh_config] if args.ssh_config else [])]
        beside_local("hosts", remote)
        six_local = min((flowgraph("six_replicas") for _ in range(repeat)), key=lambda r: r.seconds)
        six_hosts = min((flowgraph("six_replicas", *remote) for _ in range(repeat)), key=lambda r: r.seconds)
        record("local_six_replicas_startup_s", six_local.startup_s or 0.0, 3)
        record("hosts_six_replicas_startup_s", six_hosts.startup_s or 0.0, 3)
        record("local_six_replicas_run_s", six_local.seconds, 3)
        record("hosts_six_replicas_run_s", six_hosts.seconds, 3)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the benchmark runs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--repeat", type=int, default=None, help="runs per figure, the best counts (default 3)")
    parser.add_argument("--hosts", metavar="H1,H2,H3",
                        help="also measure over these hosts (e.g. made by bin/testhosts up 3)")
    parser.add_argument("--ssh-config", metavar="FILE", help="for --hosts")
    parser.add_argument("--slurm", metavar="ARGS",
                        help='also measure over Slurm, asking for an allocation with these salloc options ("-N 3"; '
                             "SLURM_CONF as the cluster needs, e.g. made by bin/testslurm up 3)")
    args = parser.parse_args()
    args.repeat = args.repeat or (1 if args.quick else 3)
    results = measure(args)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        width = max(map(len, results))
        for key, value in results.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
