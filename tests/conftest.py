"""Fixtures shared by the suite: run modes, the sshd test hosts, the test Slurm cluster, and a check that no test
leaves a process behind.

Every test that uses the ``test_hosts`` fixtures is marked ``hosts``, every test
that uses the ``test_slurm`` fixtures ``slurm``; the fast lane,
``pytest -m "not slow and not hosts and not slurm"``, leaves them out. Without root,
``/usr/sbin/sshd`` or ``ip`` (and for ``slurm``, the Slurm and munge commands) they
skip with the reason, except under CI (``CI=true``), where a missing prerequisite
fails them: CI must run them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import psutil
import pytest

from helpers import TestHosts, TestSlurm, processes_of_this_session, reap, still_running

MARKER = "FLOWGRAPH_TEST_SESSION"
os.environ.setdefault(MARKER, uuid.uuid4().hex)

HOSTS_FIXTURES = frozenset({"test_hosts", "test_hosts_session"})
SLURM_FIXTURES = frozenset({"test_slurm", "test_slurm_session"})
SSHD = Path("/usr/sbin/sshd")
SLURM_COMMANDS = {"slurmctld": "slurmctld", "slurmd": "slurmd", "munged": "munge", "srun": "slurm-client",
                  "nsenter": "util-linux"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses the sshd test hosts ``hosts``, every test that uses the Slurm cluster ``slurm``."""
    for item in items:
        if HOSTS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.hosts)
        if SLURM_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slurm)


def missing_for_test_hosts() -> list[str]:
    """What this machine lacks to run bin/testhosts (empty when nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    if not SSHD.exists():
        missing.append(f"{SSHD} (openssh-server)")
    if shutil.which("ip") is None:
        missing.append("the ip command (iproute2)")
    return missing


def missing_for_test_slurm() -> list[str]:
    """What this machine lacks to run bin/testslurm (empty when nothing): bin/testhosts' needs and Slurm's."""
    missing = missing_for_test_hosts()
    for command, package in SLURM_COMMANDS.items():
        if shutil.which(command) is None:
            missing.append(f"the {command} command ({package})")
    return missing


def is_ci() -> bool:
    """Whether this runs under CI (``CI`` set, as CI services do, and not "false" or "0")."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(what: str, marker: str, missing: list[str]) -> None:
    """Skip the test when the machine lacks what ``what`` needs; under CI, fail it instead."""
    if missing:
        reason = f"{what} need{'' if what.endswith('s') else 's'} " + ", ".join(missing)
        if is_ci():
            pytest.fail(f"{reason} (CI is set: tests marked {marker} must run there)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(params=["inproc", "local"])
def mode(request: pytest.FixtureRequest) -> str:
    """Run the test once with replicas as threads, once as local processes."""
    return request.param


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Fail a test that leaves a worker or launcher process alive (and kill it)."""
    yield
    leftovers = reap(processes_of_this_session(), timeout_s=6.0)
    if leftovers:
        pytest.fail("processes left behind: " + "; ".join(leftovers))


@pytest.fixture
def this_process() -> psutil.Process:
    return psutil.Process()


@pytest.fixture(scope="session")
def test_hosts_session():
    """Three sshd hosts in network namespaces (bin/testhosts), for the whole session.

    Skips (fails under CI) when the machine cannot make them.
    """
    require("the sshd test hosts", "hosts", missing_for_test_hosts())
    directory = Path(tempfile.mkdtemp(prefix="flowgraph-testhosts-"))
    hosts = TestHosts(3, prefix="fgt", subnet="10.78.0", directory=directory / "hosts")
    hosts.script("down")  # what an interrupted session may have left
    hosts.script("up", "3")
    try:
        yield hosts
    finally:
        hosts.script("down")


@pytest.fixture
def test_hosts(test_hosts_session):
    """The session's hosts; fails a test that leaves a process behind on any of them."""
    yield test_hosts_session
    leftovers = still_running(test_hosts_session.workers(), timeout_s=8.0)
    for process in leftovers:
        process.kill()
    assert not leftovers, f"processes left on the hosts: {[p.cmdline() for p in leftovers]}"


@pytest.fixture(scope="session")
def test_slurm_session():
    """A Slurm cluster of three nodes in network namespaces (bin/testslurm), for the whole session.

    Skips (fails under CI) when the machine cannot make it.
    """
    require("the test Slurm cluster", "slurm", missing_for_test_slurm())
    directory = Path(tempfile.mkdtemp(prefix="flowgraph-testslurm-"))
    # Not the test hosts' prefix and subnet (fgt, 10.78.0), nor bin/testslurm's defaults (fgs, 10.76.0, 16827):
    # the suite can run beside both.
    slurm = TestSlurm(3, prefix="fgu", subnet="10.74.0", directory=directory / "slurm", port=16837)
    slurm.script("down")  # what an interrupted session may have left (its daemons carry the prefix)
    try:
        slurm.script("up", "3")  # inside the try: a failed or timed-out up leaves nothing either
        yield slurm
    finally:
        slurm.script("down")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def test_slurm(test_slurm_session):
    """The session's cluster; fails the test when a job is left in squeue, or a process (slurmstepd, a
    task) on any node, ~8 s after it (and cancels or kills them)."""
    yield test_slurm_session
    jobs = test_slurm_session.wait_no_jobs(timeout_s=8.0)
    if jobs:
        test_slurm_session.cancel_all(timeout_s=8.0)
    leftovers = []
    for process in still_running(test_slurm_session.workers(), timeout_s=8.0):
        with contextlib.suppress(psutil.Error):
            leftovers.append(f"{process.pid} {' '.join(process.cmdline())}")  # before the kill makes a zombie
            process.kill()
    assert not jobs, f"jobs left in squeue: {jobs}"
    assert not leftovers, f"processes left on the Slurm nodes: {leftovers}"
