"""A tiny run of bin/bench, so the benchmark never rots (its figures are not checked here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bin" / "bench"


@pytest.mark.slow
def test_bench_quick_prints_every_figure_as_json():
    result = subprocess.run([str(BENCH), "--quick", "--json"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for key in ("flowgraph_items_per_s", "pyzmq_batched_items_per_s", "mp_queue_items_per_s",
                "ratio_to_pyzmq_batched", "flowgraph_1mib_mb_per_s", "latency_p99_ms_at_500_per_s",
                "slow_sink_rss_growth_4x_stream", "scaling_parallelism_2_vs_1", "five_nodes_first_item_s",
                "crawl_speedup_32_vs_1", "crawl_cpu_ms_per_page_concurrency_32"):
        assert key in figures
    assert figures["slow_sink_1gb_peak_total_rss_mb"] > 0
