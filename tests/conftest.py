"""Fixtures shared by the suite: run modes, and a check that no test leaves a process behind."""

from __future__ import annotations

import os
import uuid

import psutil
import pytest

from helpers import processes_of_this_session, reap

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
