"""Runs on a real Slurm cluster (bin/testslurm: slurmctld, and a slurmd in each of three network namespaces).

Every test ends with the check of the ``test_slurm`` fixture: no job left in
squeue and no process (slurmstepd, forkserver, worker) left on any node.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from flowgraph import HostError, Topology, context, run
from flowgraph.testing import assert_same_items, run_and_collect
from helpers import SLOW_TOPOLOGY, Cli, run_cli, still_running, write_topology
from test_equivalence import ordered_sinks, random_dag

THREE = "-N 3"


@pytest.fixture
def slurm(test_slurm, monkeypatch):
    """The cluster, its client commands configured for this process (``run(..., slurm_args=...)``)."""
    monkeypatch.setenv("SLURM_CONF", test_slurm.conf)
    for name in ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_JOB_NODELIST", "SLURM_JOB_CPUS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    return test_slurm


def gone_within(slurm, seconds: float) -> None:
    """Nothing of the run is left, on any node or in squeue, within ``seconds``."""
    assert still_running(slurm.workers(), timeout_s=seconds) == []
    assert slurm.wait_no_jobs(timeout_s=seconds) == []


@pytest.mark.parametrize("seed", [0, 5])
def test_random_dags_reach_the_same_sinks_locally_and_over_three_slurm_nodes(slurm, seed):
    topo = random_dag(seed)
    local = run_and_collect(topo, mode="local")
    over = run_and_collect(topo, mode="local", slurm_args=THREE)
    for sink in local:
        assert_same_items(over[sink], local[sink])
    for sink in ordered_sinks(topo):
        assert_same_items(over[sink], local[sink], ordered=True)


def test_replicas_run_on_every_node_and_context_host_is_the_slurm_node_name(slurm):
    topo = Topology("spread")

    @topo.source
    def numbers():
        yield from range(600)

    @topo.node(inputs=numbers, parallelism=6)
    def where(n):
        return context().host, os.environ["SLURMD_NODENAME"], os.environ["SLURM_JOB_ID"], os.getpid()

    @topo.node(inputs=numbers, hosts=["n2"], parallelism=2)
    def pinned(n):
        return context().host

    topo.sink(lambda seen: None, inputs=where, name="spread")
    topo.sink(lambda seen: None, inputs=pinned, name="on_n2")
    collected = run_and_collect(topo, slurm_args=THREE)
    seen = collected["spread"]
    assert {host for host, _, _, _ in seen} == {"n1", "n2", "n3"}
    assert all(host == node for host, node, _, _ in seen)
    assert len({job for _, _, job, _ in seen}) == 1
    assert len({pid for _, _, _, pid in seen}) == 6
    assert set(collected["on_n2"]) == {"n2"}


WHERE_TOPOLOGY = """
    from flowgraph import Topology, context

    topo = Topology("where")

    @topo.source
    def numbers():
        yield from range(1000)

    @topo.node(inputs=numbers, parallelism=3)
    def where(n):
        return context().host

    @topo.sink(inputs=where)
    class Hosts:
        def setup(self):
            self.hosts = set()

        def process(self, host):
            self.hosts.add(host)

        def finish(self):
            print("hosts", " ".join(sorted(self.hosts)))
"""
"""Says which hosts its replicas ran on."""


def test_a_run_inside_salloc_uses_the_allocation_and_check_shows_the_placement(slurm, tmp_path):
    path = write_topology(tmp_path, WHERE_TOPOLOGY)
    command = ["salloc", "-N", "2", sys.executable, "-m", "flowgraph"]
    ran = subprocess.run([*command, "run", str(path), "--slurm", "--quiet"], env=slurm.env, capture_output=True,
                         text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert "topology 'where' (slurm): done" in ran.stderr
    assert re.search(r"\] hosts n\d n\d\n", ran.stderr), ran.stderr
    checked = subprocess.run([*command, "check", str(path), "--slurm"], env=slurm.env, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert re.search(r"where/0 +@n\d", checked.stdout), checked.stdout


def test_an_sbatch_script_runs_the_topology_on_its_allocation(slurm, tmp_path):
    path = write_topology(tmp_path, WHERE_TOPOLOGY)
    script = tmp_path / "job.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        #SBATCH -N 3
        exec {sys.executable} -m flowgraph run {path} --slurm --quiet
    """))
    log = tmp_path / "job.log"
    submitted = slurm.run("sbatch", "--parsable", "-o", str(log), str(script))
    job = submitted.stdout.strip().split(";")[0]
    assert slurm.wait_no_jobs(timeout_s=60) == [], f"job {job} still runs"
    output = log.read_text()
    assert "topology 'where' (slurm): done" in output, output
    assert "hosts n1 n2 n3" in output, output


@pytest.mark.parametrize("how", ["sigkill", "sigint", "failure", "scancel"])
def test_every_way_a_run_ends_leaves_no_step_and_no_worker(slurm, tmp_path, how):
    source = SLOW_TOPOLOGY
    if how == "failure":
        source = source.replace("return n\n", "if n == 5000:\n            raise ValueError('five thousand')\n"
                                "        return n\n")
    path = write_topology(tmp_path, source)
    with Cli("run", str(path), "--slurm-args", THREE, env=slurm.env) as cli:
        if how == "failure":
            assert cli.wait(60) == 1
            assert "ValueError: five thousand" in cli.output
        else:
            cli.wait_for_line("sink is working")
            assert slurm.steps(), "the forkservers run as job steps"
            if how == "sigkill":
                cli.signal(signal.SIGKILL)
            elif how == "sigint":
                cli.signal(signal.SIGINT)
                assert cli.wait(20) == 130
            else:
                job = slurm.squeue()[0].split()[0]
                slurm.run("scancel", job)
                assert cli.wait(20) == 1
                assert f"flowgraph: error: the Slurm job {job} was cancelled" in cli.output
        gone_within(slurm, 5.0)


@pytest.mark.parametrize("how", ["sigkill", "scancel"])
def test_a_launcher_inside_salloc_leaves_nothing_when_killed_or_cancelled(slurm, tmp_path, how):
    path = write_topology(tmp_path, SLOW_TOPOLOGY)
    command = ["salloc", "-N", "3", sys.executable, "-m", "flowgraph", "run", str(path), "--slurm"]
    process = subprocess.Popen(command, env=slurm.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "sink is working" in line:
                break
        job = slurm.squeue()[0].split()[0]
        if how == "sigkill":
            launcher = next(p for p in psutil.Process(process.pid).children(recursive=True)
                            if "flowgraph" in " ".join(p.cmdline()) and "run" in p.cmdline())
            launcher.kill()
        else:
            slurm.run("scancel", job)
        output = process.stdout.read()
        code = process.wait(20)
        if how == "scancel":
            assert code == 1 and f"the Slurm job {job} was cancelled" in output, output
        gone_within(slurm, 5.0)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_probe_failures_are_named_before_anything_starts(slurm, tmp_path):
    topo = Topology("probed")
    topo.source(lambda: iter(()), name="nothing")
    with pytest.raises(HostError, match=r"Slurm node 'n\d' has no Python at '/nowhere/python'"):
        run(topo, slurm_args=THREE, remote_python="/nowhere/python")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True, timeout=60)
    with pytest.raises(HostError, match=r"Slurm node 'n1' has no flowgraph for '.*bare/bin/python'"):
        run(topo, slurm_args="-N 1 -w n1", remote_python=str(tmp_path / "bare" / "bin" / "python"))
    with pytest.raises(HostError, match=r"--slurm runs inside a Slurm allocation \(sbatch, salloc: SLURM_JOB_ID"):
        run(topo, slurm=True)
    pinned = Topology("pinned")
    pinned.source(lambda: iter(()), name="nothing", hosts=["n9"])
    with pytest.raises(HostError, match=r"node 'nothing' is pinned to n9, not a node of the Slurm job \d+ "
                                        r"\(its nodes: n1,n2\)"):
        run(pinned, slurm_args="-N 2 -w n1,n2")
    code, _, stderr = run_cli("run", str(write_topology(tmp_path, SLOW_TOPOLOGY)), "--slurm-args", "-p nowhere",
                              env=slurm.env)
    assert code == 2
    assert ("flowgraph: error: salloc -p nowhere could not allocate: salloc: error: Job submit/allocate failed: "
            "Invalid partition name specified") in stderr
    code, _, stderr = run_cli("run", str(write_topology(tmp_path, SLOW_TOPOLOGY)), "--slurm-args", THREE,
                              env={**slurm.env, "PATH": str(Path(sys.executable).parent)})
    assert code == 2
    assert "the Slurm commands srun, squeue, scancel, scontrol, salloc are not on PATH (install slurm-client)" in stderr


SURVIVOR_TOPOLOGY = """
import time
from flowgraph import Topology, context

topo = Topology("survivor")

@topo.source
def numbers():
    for n in range(3000):
        yield n
        time.sleep(0.002)

@topo.node(inputs=numbers, parallelism=3, hosts=["n1", "n2", "n3"])
def where(n):
    if n == 500:
        print("half way", flush=True)
    return n

@topo.sink(inputs=where, hosts=["n1"])
class Count:
    def setup(self):
        self.seen = set()

    def process(self, n):
        self.seen.add(n)

    def finish(self):
        print("distinct", len(self.seen), flush=True)
"""
"""Its middle node runs on every node; its sink, on n1, counts the distinct items it got."""


def test_with_restarts_replicas_of_a_lost_node_start_again_on_another(slurm, tmp_path):
    path = write_topology(tmp_path, SURVIVOR_TOPOLOGY)
    try:
        with Cli("run", str(path), "--slurm-args", THREE, "--restarts", "2", env=slurm.env) as cli:
            cli.wait_for_line("half way")
            slurm.kill_everything_in("n3")  # slurmd, slurmstepd, the forkserver and its replicas
            assert cli.wait(90) == 0, cli.output
            assert "distinct 3000" in cli.output
            assert "@n3 " not in cli.output.split("node  ")[-1], "the summary shows every replica off n3"
    finally:
        slurm.restart_slurmd("n3")


def test_a_launcher_killed_while_its_allocation_pends_withdraws_the_request(slurm, tmp_path):
    path = write_topology(tmp_path, SLOW_TOPOLOGY)
    with Cli("run", str(path), "--slurm-args", "-N 9", env=slurm.env) as cli:  # more nodes than the cluster has
        cli.wait_for_line(r"\[salloc\] salloc: job \d+ queued and waiting for resources")
        assert slurm.squeue()
        cli.signal(signal.SIGKILL)
        gone_within(slurm, 5.0)


@pytest.mark.slow
def test_with_restarts_replicas_of_a_node_cut_off_the_network_start_again_on_another(slurm, tmp_path):
    path = write_topology(tmp_path, SURVIVOR_TOPOLOGY)
    try:
        with Cli("run", str(path), "--slurm-args", THREE, "--restarts", "2", env=slurm.env) as cli:
            cli.wait_for_line("half way")
            slurm.set_link("n3", "down")
            assert cli.wait(90) == 0, cli.output
            assert "distinct 3000" in cli.output
            assert re.search(r"replica \d on n3 stopped answering", cli.output) or "n3" in cli.output
    finally:
        slurm.set_link("n3", "up")
