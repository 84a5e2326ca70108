"""The test Slurm cluster itself (bin/testslurm, the test_slurm fixtures): nodes, jobs, steps, cleanup."""

from __future__ import annotations

import contextlib
import subprocess
import time

import psutil

from helpers import still_running


def run(test_slurm, *command: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=test_slurm.env, capture_output=True, text=True, timeout=timeout_s)


def until(condition, timeout_s: float = 10.0):
    """Poll ``condition`` until it returns something true (returned) or ``timeout_s`` passes (None)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    return None


def names_of_workers(test_slurm, node: str) -> list[str]:
    """The names of the workers (processes but slurmd and sshd) on ``node``."""
    on_node = set(test_slurm.pids(node))
    names = []
    for process in test_slurm.workers():
        with contextlib.suppress(psutil.Error):
            if process.pid in on_node:
                names.append(process.name())
    return names


TASK_REPORT = 'echo "$SLURMD_NODENAME $SLURM_LAUNCH_NODE_IPADDR $(hostname -I)"'


def test_the_tests_are_marked_slurm(test_slurm, request):
    assert request.node.get_closest_marker("slurm") is not None


def test_srun_runs_one_task_on_every_node_in_its_own_namespace(test_slurm):
    result = run(test_slurm, "srun", "-N3", "--ntasks-per-node=1", "sh", "-c", TASK_REPORT)
    assert result.returncode == 0, result.stderr
    reports = sorted(line.split() for line in result.stdout.splitlines())
    # From this (root) namespace a step's launch address is the bridge's; each node has its own address.
    assert reports == [[node, f"{test_slurm.subnet}.1", test_slurm.address(node)] for node in test_slurm.nodes]


def test_srun_exit_status_and_stderr_come_back(test_slurm):
    result = run(test_slurm, "srun", "-N1", "-n1", "-w", "n2", "sh", "-c", "echo oops >&2; exit 3")
    assert result.returncode == 3
    assert "oops" in result.stderr


def test_salloc_runs_steps_on_its_nodes(test_slurm):
    result = run(test_slurm, "salloc", "-N2", "srun", "-l", "printenv", "SLURMD_NODENAME")
    assert result.returncode == 0, result.stderr
    assert sorted(line.split(": ")[1] for line in result.stdout.splitlines()) == ["n1", "n2"]


def test_an_sbatch_job_runs_and_ends(test_slurm, tmp_path):
    result = run(test_slurm, "sbatch", "--parsable", "-N1", "-w", "n3", f"--chdir={tmp_path}", "-o", "out-%j.txt",
                 "--wrap", f"{TASK_REPORT}; srun printenv SLURM_LAUNCH_NODE_IPADDR")
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    assert test_slurm.wait_no_jobs(timeout_s=10.0) == []
    # The batch script itself has no launch address; a step it starts has its node's.
    assert (tmp_path / f"out-{job}.txt").read_text().split() == ["n3", test_slurm.address("n3"),
                                                                 test_slurm.address("n3")]
    shown = run(test_slurm, "scontrol", "show", "job", job).stdout  # kept MinJobAge=30 s after the end
    assert "JobState=COMPLETED" in shown
    assert "ExitCode=0:0" in shown


def test_a_step_left_running_is_found_and_cancel_all_ends_it(test_slurm):
    srun = subprocess.Popen(["srun", "-N1", "-n1", "-w", "n2", "-J", "left", "sleep", "300"], env=test_slurm.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert until(test_slurm.steps), "the step does not show in squeue -s"
        assert until(lambda: "sleep" in names_of_workers(test_slurm, "n2")), "the task is not among n2's workers"
        assert "slurmstepd" in names_of_workers(test_slurm, "n2")
        assert [line.split()[1:] for line in test_slurm.squeue()] == [["left", "RUNNING"]]
        assert test_slurm.cancel_all() == []
        assert srun.wait(timeout=10) != 0
        assert test_slurm.steps() == []
        assert still_running(test_slurm.workers(), timeout_s=8.0) == []
    finally:
        srun.kill()
        srun.wait(timeout=10)


def test_a_killed_slurmd_restarts_and_its_node_runs_steps_again(test_slurm):
    old = test_slurm.slurmd_pid("n3")
    test_slurm.kill_slurmd("n3")
    test_slurm.restart_slurmd("n3")
    assert test_slurm.slurmd_pid("n3") != old
    result = run(test_slurm, "srun", "-N1", "-w", "n3", "printenv", "SLURMD_NODENAME")
    assert (result.returncode, result.stdout) == (0, "n3\n"), result.stderr
