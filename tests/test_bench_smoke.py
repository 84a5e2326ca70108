"""A tiny run of bin/bench, so the benchmark never rots (its figures are not checked here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bin" / "bench"


def test_bench_quick_prints_every_figure_as_json():
    result = subprocess.run([str(BENCH), "--quick", "--json"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for key in ("local_small_dicts_items_per_s", "inproc_small_dicts_items_per_s",
                "slow_sink_peak_total_rss_mb", "local_run_of_1000_items_s"):
        assert key in figures
    assert figures["slow_sink_peak_total_rss_mb"] > 0
