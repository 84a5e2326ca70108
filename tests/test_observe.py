"""Seeing a run: progress and the bottleneck, metrics JSON, logs and prints, pictures, environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from flowgraph import Topology, broadcast
from flowgraph.cli.progress import node_rows
from flowgraph.wire.control import EdgeStats, ReplicaStats
from helpers import run_cli, write_topology

SLOW_SINK = """
    import logging
    import time
    from flowgraph import Topology, context

    topo = Topology("slow-sink")

    @topo.source
    def numbers():
        yield from range(int(context().params.get("count", "1500")))

    @topo.node(inputs=numbers, parallelism=2)
    def work(n):
        return (n, b"x" * 20_000)

    @topo.sink(inputs=work)
    def store(item):
        time.sleep(0.002)
        if item[0] == 10:
            logging.getLogger("mine").info("info from the sink")
            print("print from the sink")
"""


def three_nodes() -> Topology:
    topo = Topology("three")

    @topo.source
    def a():
        yield 1

    topo.node(lambda x: x, inputs=a, name="b", parallelism=2)
    topo.sink(lambda x: None, inputs={"b": broadcast()}, name="c")
    return topo


def counters(items_in=0, items_out=0, busy_s=0.0, blocked=None):
    return ReplicaStats(items_in=items_in, items_out=items_out, busy_s=busy_s, started_at=1.0,
                        edges={name: EdgeStats(blocked_s=seconds) for name, seconds in (blocked or {}).items()})


def test_the_node_whose_input_is_full_and_output_is_not_is_the_bottleneck():
    plan = three_nodes().check()
    earlier = {"a/0": counters(), "b/0": counters(), "b/1": counters(), "c/0": counters()}
    later = {
        "a/0": counters(items_out=100, busy_s=0.1, blocked={"a->b": 0.9}),
        "b/0": counters(items_in=50, items_out=50, busy_s=0.3, blocked={"b->c": 0.1}),
        "b/1": counters(items_in=50, items_out=50, busy_s=0.3, blocked={"b->c": 0.1}),
        "c/0": counters(items_in=100, busy_s=0.2),
    }
    rows = {row.name: row for row in node_rows(plan, earlier, later, 1.0, {"a/0", "b/0", "b/1", "c/0"})}
    assert rows["b"].bottleneck and not rows["a"].bottleneck and not rows["c"].bottleneck
    assert (rows["b"].input_full, rows["b"].output_full, rows["b"].busy) == (0.9, 0.1, 0.3)
    assert rows["a"].input_full is None and rows["c"].output_full is None
    assert (rows["a"].rate, rows["b"].rate, rows["c"].rate) == (100, 100, 100)
    assert rows["b"].alive == 2 and rows["b"].replicas == 2


def test_no_node_is_the_bottleneck_when_nothing_waits():
    plan = three_nodes().check()
    later = {replica.id: counters(busy_s=0.1) for replica in plan.replicas}
    rows = node_rows(plan, {}, later, 1.0, set(later))
    assert not any(row.bottleneck for row in rows)
    assert [row.alive for row in node_rows(plan, {}, later, 1.0, {"b/1"})] == [0, 1, 0]


def test_progress_lines_show_the_slow_sink_as_the_bottleneck(tmp_path):
    path = write_topology(tmp_path, SLOW_SINK)
    code, stdout, stderr = run_cli("run", str(path), "--progress-interval", "0.5")
    assert code == 0, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("progress: ")]
    assert any(re.match(r"progress: store 1/1 alive in=\d+ out=0 rate=\d+/s busy=\d+% input_full=\d+% "
                        r"output_full=- in_flight=\d+ BOTTLENECK", line) for line in lines), stderr
    assert "topology 'slow-sink' (local): done in" in stderr
    assert stdout == ""


def test_quiet_prints_no_progress_but_the_summary(tmp_path):
    path = write_topology(tmp_path, SLOW_SINK)
    code, _, stderr = run_cli("run", str(path), "--quiet", "--set", "count=100", "--progress-interval", "0.1")
    assert code == 0, stderr
    assert "progress:" not in stderr and "done in" in stderr


def test_prints_and_logs_of_nodes_reach_stderr_prefixed_by_log_level(tmp_path):
    path = write_topology(tmp_path, SLOW_SINK)
    code, _, stderr = run_cli("run", str(path), "--set", "count=50")
    assert code == 0
    assert "[store/0@localhost] print from the sink" in stderr
    assert "info from the sink" not in stderr
    code, _, stderr = run_cli("run", str(path), "--set", "count=50", "--log-level", "info")
    assert code == 0
    assert "[store/0@localhost] INFO mine: info from the sink" in stderr


def test_lines_printed_by_replicas_are_never_interleaved(tmp_path, mode):
    path = write_topology(tmp_path, """
        import sys
        from flowgraph import Topology, context

        topo = Topology("chatty")

        @topo.source(parallelism=3)
        def talk():
            me = context().replica
            for n in range(300):
                sys.stdout.write(f"replica {me} line {n} " + "z" * 200 + " end")
                sys.stdout.write("\\n")
            yield 1

        @topo.sink(inputs=talk)
        def store(n):
            pass
    """)
    code, _, stderr = run_cli("run", *(["--inproc"] if mode == "inproc" else []), str(path))
    assert code == 0
    lines = [line for line in stderr.splitlines() if "line" in line and "replica" in line]
    assert len(lines) == 900
    for line in lines:
        assert re.fullmatch(r"\[talk/(\d)@localhost\] replica \1 line \d+ z{200} end", line), line


def test_metrics_json_has_counters_per_replica_and_how_the_run_ended(tmp_path):
    path = write_topology(tmp_path, SLOW_SINK)
    metrics = tmp_path / "metrics.json"
    code, _, stderr = run_cli("run", str(path), "--set", "count=300", "--metrics-json", str(metrics))
    assert code == 0, stderr
    data = json.loads(metrics.read_text())
    assert (data["format"], data["status"], data["error"]) == ("flowgraph-metrics/1", "ok", None)
    store = data["nodes"]["store"]
    assert store["items_in"] == 300 and store["parallelism"] == 1
    replica = store["replicas"][0]
    assert replica["busy_s"] >= 0.5 and replica["ended_at"] > replica["started_at"] > 0
    work = data["nodes"]["work"]["replicas"]
    assert sum(r["items_out"] for r in work) == 300 and sum(r["bytes_out"] for r in work) > 300 * 20_000
    assert all(r["error"] is None for node in data["nodes"].values() for r in node["replicas"])


def test_metrics_json_is_written_when_a_node_fails(tmp_path):
    path = write_topology(tmp_path, """
        from flowgraph import Topology

        topo = Topology("failing")

        @topo.source
        def numbers():
            yield from range(100)

        @topo.sink(inputs=numbers)
        def store(n):
            if n == 50:
                raise RuntimeError("store is full")
    """)
    metrics = tmp_path / "metrics.json"
    code, _, stderr = run_cli("run", str(path), "--metrics-json", str(metrics))
    assert code == 1
    data = json.loads(metrics.read_text())
    assert data["status"] == "failed"
    assert "node 'store' replica 0 on localhost failed in process(): RuntimeError: store is full" in data["error"]
    assert data["nodes"]["store"]["replicas"][0]["error"].startswith("node 'store' replica 0")
    assert stderr.rstrip().splitlines()[-1].startswith("RuntimeError: store is full")
    assert stderr.count("RuntimeError: store is full") == 2  # the one-line message, and the traceback's end


def test_graph_writes_dot_and_mermaid_with_parallelism_and_groupings(tmp_path):
    path = write_topology(tmp_path, SLOW_SINK)
    code, _, stderr = run_cli("graph", str(path), "-o", str(tmp_path / "g.dot"))
    assert code == 0, stderr
    dot = (tmp_path / "g.dot").read_text()
    assert '"work" [label="work\\nnode ×2"];' in dot and '"numbers" -> "work" [label="shuffle\\n1→2"];' in dot
    code, _, _ = run_cli("graph", str(path), "-o", str(tmp_path / "g.mmd"))
    mermaid = (tmp_path / "g.mmd").read_text()
    assert mermaid.startswith("flowchart LR") and 'n1 -->|"shuffle 2→1"| n2' in mermaid
    code, _, stderr = run_cli("graph", str(path), "-o", str(tmp_path / "g.png"))
    assert code == 2 and "the file name must end in .dot, .mmd, .svg" in stderr


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is installed by .ci/run")
def test_graph_draws_svg_with_graphviz(tmp_path):
    path = write_topology(tmp_path, SLOW_SINK)
    code, _, stderr = run_cli("graph", str(path), "-o", str(tmp_path / "g.svg"))
    assert code == 0, stderr
    assert "<svg" in (tmp_path / "g.svg").read_text()


def test_graph_svg_without_graphviz_says_how_to_install_it(tmp_path):
    path = write_topology(tmp_path, SLOW_SINK)
    result = subprocess.run([sys.executable, "-m", "flowgraph", "graph", str(path), "-o", str(tmp_path / "g.svg")],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": str(tmp_path)})
    assert result.returncode == 2
    assert "drawing SVG needs Graphviz's 'dot' command" in result.stderr and "apt-get install graphviz" in result.stderr


def test_run_options_come_from_the_environment_and_the_command_line_wins(tmp_path):
    path = write_topology(tmp_path, SLOW_SINK)
    metrics = tmp_path / "metrics.json"
    code, _, stderr = run_cli("run", str(path), "--set", "count=20",
                              env={"FLOWGRAPH_SET": "count=5 tag=x", "FLOWGRAPH_QUIET": "yes",
                                   "FLOWGRAPH_PROGRESS_INTERVAL": "0.1", "FLOWGRAPH_HWM": "2",
                                   "FLOWGRAPH_METRICS_JSON": str(metrics)})
    assert code == 0, stderr
    assert "progress:" not in stderr
    assert json.loads(metrics.read_text())["nodes"]["store"]["items_in"] == 20


@pytest.mark.parametrize("variable, value, message", [
    ("FLOWGRAPH_HWM", "lots", "FLOWGRAPH_HWM='lots': invalid literal for int()"),
    ("FLOWGRAPH_INPROC", "maybe", "FLOWGRAPH_INPROC='maybe': expected 1/true/yes/on or 0/false/no/off"),
    ("FLOWGRAPH_LOG_LEVEL", "loud", "FLOWGRAPH_LOG_LEVEL='loud': expected one of debug, info, warning, error"),
])
def test_a_bad_environment_value_is_a_usage_error_naming_the_variable(tmp_path, variable, value, message):
    path = write_topology(tmp_path, SLOW_SINK)
    code, _, stderr = run_cli("run", str(path), env={variable: value})
    assert code == 2
    assert message in stderr


def test_run_help_names_the_environment_variable_of_every_option():
    code, stdout, _ = run_cli("run", "--help")
    assert code == 0
    for variable in ("FLOWGRAPH_INPROC", "FLOWGRAPH_SET", "FLOWGRAPH_HWM", "FLOWGRAPH_QUIET",
                     "FLOWGRAPH_PROGRESS_INTERVAL", "FLOWGRAPH_METRICS_JSON", "FLOWGRAPH_LOG_LEVEL",
                     "FLOWGRAPH_HOSTS", "FLOWGRAPH_SSH_CONFIG", "FLOWGRAPH_REMOTE_PYTHON", "FLOWGRAPH_ADVERTISE"):
        assert variable in stdout.replace("\n", " ").replace("  ", " ") or variable in stdout.replace("\n", "")


def test_a_terminal_gets_a_live_table_that_marks_the_bottleneck(tmp_path):
    import pty

    path = write_topology(tmp_path, SLOW_SINK)
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "flowgraph", "run", str(path)], stdin=follower,
                               stdout=follower, stderr=follower, env={**os.environ, "COLUMNS": "160"})
    os.close(follower)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closes when the run ends
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(60) == 0
    finally:
        process.kill()
        process.wait()
        os.close(leader)
    screen = b"".join(chunks).decode(errors="replace")
    assert "input full" in screen and "◀ bottleneck" in screen
    assert "[store/0@localhost] print from the sink" in screen
    assert "topology 'slow-sink' (local): done in" in screen
