"""Fixtures shared by the suite: run modes, and a check that no test leaves a process behind."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import psutil
import pytest

from helpers import TestHosts, processes_of_this_session, reap, still_running

MARKER = "FLOWGRAPH_TEST_SESSION"
os.environ.setdefault(MARKER, uuid.uuid4().hex)


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
    """Three sshd hosts in network namespaces (bin/testhosts), for the whole session."""
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
