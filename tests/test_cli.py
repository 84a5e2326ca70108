"""The command line: exit codes, one-line errors for bad topologies, check, --set, summary."""

from __future__ import annotations

import json
import textwrap

import pytest

import flowgraph
from flowgraph.cli import check_command, run_command
from helpers import run_cli, write_topology

GOOD = """
    from flowgraph import Topology, context

    topo = Topology("good")

    @topo.source
    def numbers():
        yield from range(int(context().params.get("count", "10")))

    @topo.node(inputs=numbers, parallelism=2)
    def double(n):
        return n * 2

    @topo.sink(inputs=double)
    def show(n):
        if n == 2 * (int(context().params.get("count", "10")) - 1):
            print("last item", n, "tag", context().params.get("tag"))
"""

HEADER = "from flowgraph import Topology\ntopo = Topology('bad')\n"

BAD = {
    "cycle": (HEADER + """
@topo.source
def s():
    yield 1
topo.node(lambda x: x, inputs=["s", "c"], name="a")
topo.node(lambda x: x, inputs="a", name="b")
topo.node(lambda x: x, inputs="b", name="c")
""", "topology 'bad' has a cycle: a -> b -> c -> a"),
    "unknown input": (HEADER + """
@topo.source
def fetch():
    yield 1
topo.sink(lambda x: None, inputs="parse", name="store")
""", "sink 'store' lists input 'parse', which is not declared in topology 'bad' (declared: fetch, store)"),
    "duplicate name": (HEADER + """
@topo.source
def fetch():
    yield 1
topo.node(lambda x: x, inputs=fetch, name="fetch")
""", "node 'fetch' is declared twice in topology 'bad'"),
    "source with inputs": (HEADER + """
@topo.source
def a():
    yield 1
@topo.source(inputs=a)
def b():
    yield 1
""", "source 'b' has inputs"),
    "node without inputs": (HEADER + """
@topo.node
def lonely(x):
    return x
""", "node 'lonely' has no inputs"),
    "parallelism below one": (HEADER + """
@topo.source(parallelism=0)
def a():
    yield 1
""", "source 'a' has parallelism 0; it must be an integer >= 1"),
    "no topology": ("x = 1\n", "defines no Topology; declare one with Topology(name)"),
    "several topologies": ("from flowgraph import Topology\none = Topology('one')\ntwo = Topology('two')\n",
                           "defines several topologies (one, two); pick one with"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("command", ["run", "check"])
def test_a_bad_topology_exits_2_with_one_line_naming_the_problem_and_no_traceback(tmp_path, case, command):
    source, expected = BAD[case]
    path = write_topology(tmp_path, source)
    code, stdout, stderr = run_cli(command, str(path))
    assert code == 2
    assert stderr.startswith("flowgraph: error: ")
    assert expected in stderr
    assert stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr + stdout


def test_var_picks_one_of_several_topologies(tmp_path, capsys):
    path = write_topology(tmp_path, textwrap.dedent(GOOD) + "\nother = Topology('other')\n")
    assert check_command(f"{path}:topo") == 0
    assert "topology 'good'" in capsys.readouterr().out
    assert check_command(f"{path}:nothing") == 2
    assert "has no topology named 'nothing'; topologies there: other, topo" in capsys.readouterr().err


def test_a_missing_file_or_module_is_a_usage_error(tmp_path, capsys):
    assert run_command(str(tmp_path / "absent.py")) == 2
    assert "no topology file" in capsys.readouterr().err
    assert run_command("no_such_module_anywhere") == 2
    assert "no file or module named 'no_such_module_anywhere'" in capsys.readouterr().err


def test_an_exception_while_importing_the_topology_shows_the_users_traceback(tmp_path):
    path = write_topology(tmp_path, "from flowgraph import Topology\nraise RuntimeError('my module is broken')\n")
    code, _, stderr = run_cli("run", str(path))
    assert code == 2
    assert "importing" in stderr and "RuntimeError: my module is broken" in stderr
    assert str(path) in stderr


def test_check_prints_the_plan_without_starting_anything(tmp_path):
    path = write_topology(tmp_path, GOOD)
    code, stdout, _ = run_cli("check", str(path))
    assert code == 0
    assert "topology 'good': 3 nodes, 4 replicas, 2 edges" in stdout
    assert "numbers->double" in stdout and "PUSH->PULL" in stdout
    assert "eos_expected=2" in stdout


def test_check_shows_the_placement_over_hosts_without_contacting_them(tmp_path):
    path = write_topology(tmp_path, GOOD)
    code, stdout, _ = run_cli("check", str(path), "--hosts", "nowhere-1.invalid,nowhere-2.invalid")
    assert code == 0
    assert "double/0" in stdout and "@nowhere-2.invalid" in stdout and "@nowhere-1.invalid" in stdout


def test_run_exits_0_prints_node_output_with_prefix_and_a_summary(tmp_path):
    path = write_topology(tmp_path, GOOD)
    code, _, stderr = run_cli("run", str(path), "--set", "count=50", "--set", "tag=x=y")
    assert code == 0, stderr
    assert "[show/0@localhost] last item 98 tag x=y" in stderr
    assert "topology 'good' (local): done in" in stderr
    assert "double" in stderr and "50" in stderr


def test_run_inproc_gives_the_same_output(tmp_path):
    path = write_topology(tmp_path, GOOD)
    code, _, stderr = run_cli("run", "--inproc", str(path), "--set", "count=50")
    assert code == 0, stderr
    assert "[show/0@localhost] last item 98 tag None" in stderr
    assert "topology 'good' (inproc)" in stderr


def test_module_target_and_metrics_json(tmp_path):
    write_topology(tmp_path, GOOD, name="my_topology.py")
    metrics = tmp_path / "metrics.json"
    code, _, stderr = run_cli("run", "--quiet", "my_topology:topo", "--metrics-json", str(metrics),
                              cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert code == 0, stderr
    data = json.loads(metrics.read_text())
    assert data["nodes"]["double"]["items_in"] == 10
    assert [r["items_in"] for r in data["nodes"]["double"]["replicas"]] != []


def test_set_without_equals_is_a_usage_error(tmp_path):
    path = write_topology(tmp_path, GOOD)
    code, _, stderr = run_cli("run", str(path), "--set", "novalue")
    assert code == 2
    assert "--set takes KEY=VALUE, not 'novalue'" in stderr


def test_help_lists_only_the_commands_a_user_runs():
    code, stdout, _ = run_cli("--help")
    assert code == 0
    assert "worker" not in stdout and "SUPPRESS" not in stdout
    assert all(command in stdout for command in ("run", "check", "graph"))


def test_version_prints_the_version_every_host_must_have():
    code, stdout, _ = run_cli("--version")
    assert (code, stdout) == (0, f"flowgraph {flowgraph.__version__}\n")
