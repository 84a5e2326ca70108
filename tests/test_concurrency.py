"""Many items in flight per replica (``concurrency=N``): ``async def`` on an event loop, blocking code on threads.

Against a real web server (``nodes.site``, aiohttp.web on 127.0.0.1) that
answers after a delay and counts the requests it has open at once; in
``--inproc`` and with processes. A test that needs requests in flight at a
known moment holds the server's responses and waits until it sees them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flowgraph import DeadLetter, RunFailed, Topology, context
from flowgraph.testing import MODES, run_and_collect
from nodes.site import Server, serve

WAIT_S = 30.0


@pytest.fixture
def site(tmp_path: Path):
    (tmp_path / "page.html").write_text("<title>page</title>")
    with serve(tmp_path, delay_s=0.02) as server:
        yield server


def wait_until(condition, what: str, timeout_s: float = WAIT_S) -> None:
    """Poll ``condition`` (a counter of a real server or a file) until it holds; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.005)


class Get:
    """An async node that GETs ``{url}page.html?n=N`` for item N and returns N, the status and its input."""

    def __init__(self, url: str, jitter: bool = False) -> None:
        self.url = url
        self.jitter = jitter

    async def setup(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def process(self, n: int) -> tuple[int, int, str | None]:
        if self.jitter:
            await asyncio.sleep(((n * 7919) % 5) / 1000)  # complete out of order
        async with self.session.get(f"{self.url}page.html?n={n}") as response:
            await response.read()
            return n, response.status, context().input

    async def teardown(self) -> None:
        await self.session.close()


def fetch_topology(url: str, concurrency: int, ordered: bool = True, parallelism: int = 1,
                   jitter: bool = False) -> Topology:
    topo = Topology("fetch")

    @topo.source
    def numbers():
        yield from range(200)

    topo.node(Get(url, jitter), inputs=numbers, name="get", concurrency=concurrency, ordered=ordered,
              parallelism=parallelism)

    @topo.sink(inputs="get")
    def store(row):
        pass

    return topo


def run_in_thread(topo: Topology, mode: str, **options: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``topo`` with ``run_and_collect`` in a thread; the dict gets ``result`` or ``error``."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = run_and_collect(topo, mode=mode, **options)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("mode", MODES)
def test_async_node_with_concurrency_50_keeps_50_requests_in_flight_and_its_outputs_in_order(site: Server, mode):
    topo = fetch_topology(site.url, concurrency=50, jitter=True)

    with site.hold():
        thread, outcome = run_in_thread(topo, mode)
        wait_until(lambda: site.in_flight == 50 or not thread.is_alive(), "50 requests in flight")
        assert site.in_flight == 50, outcome
    thread.join(WAIT_S)

    assert not thread.is_alive() and "error" not in outcome, outcome
    assert outcome["result"]["store"] == [(n, 200, "numbers") for n in range(200)]
    assert site.max_in_flight == 50
    assert site.requests == 200


@pytest.mark.parametrize("mode", MODES)
def test_async_node_unordered_gives_every_item_and_at_most_n_in_flight_per_replica(site: Server, mode):
    topo = fetch_topology(site.url, concurrency=8, ordered=False, parallelism=2, jitter=True)

    with site.hold():
        thread, outcome = run_in_thread(topo, mode)
        wait_until(lambda: site.in_flight == 16 or not thread.is_alive(), "16 requests in flight")
    thread.join(WAIT_S)

    assert "error" not in outcome, outcome
    rows = outcome["result"]["store"]
    assert sorted(rows) == [(n, 200, "numbers") for n in range(200)]
    assert site.max_in_flight == 16


def test_unordered_outputs_leave_as_they_complete():
    topo = Topology("unordered")

    @topo.source
    def numbers():
        yield from range(20)

    @topo.node(inputs=numbers, concurrency=20, ordered=False)
    async def wait(n):
        await asyncio.sleep((20 - n) * 0.01)  # the last item completes first
        return n

    @topo.sink(inputs=wait)
    def store(n):
        pass

    rows = run_and_collect(topo, mode="inproc")["store"]
    assert sorted(rows) == list(range(20))
    assert rows != list(range(20))


@pytest.mark.parametrize("mode", MODES)
def test_blocking_function_with_concurrency_runs_on_that_many_threads_in_order(mode):
    topo = Topology("threads")

    @topo.source
    def numbers():
        yield from range(64)

    @topo.node(inputs=numbers, concurrency=8)
    def work(n):
        time.sleep(((n * 31) % 4) / 500)
        return n, threading.current_thread().name, context().node

    @topo.sink(inputs=work)
    def store(row):
        pass

    rows = run_and_collect(topo, mode=mode)["store"]
    assert [n for n, _, _ in rows] == list(range(64))
    assert {node for _, _, node in rows} == {"work"}
    threads = {name for _, name, _ in rows}
    assert 1 < len(threads) <= 8 and all(name.startswith("flowgraph-work") for name in threads)


def test_a_full_window_takes_no_new_item():
    """Backpressure: with every slot waiting on an event, the replica takes nothing more than N items."""
    topo = Topology("window")

    @topo.source
    def numbers():
        yield from range(30)

    class Gate:
        async def setup(self):
            self.started = 0
            self.gate = asyncio.Event()

        async def process(self, n):
            self.started += 1
            if self.started == 4:
                assert context().node == "gate"
                self.gate.set()  # a fifth start before the first four completed would be a bug
            await self.gate.wait()
            return n, self.started

    topo.node(Gate, inputs=numbers, name="gate", concurrency=4)

    @topo.sink(inputs="gate")
    def store(row):
        pass

    rows = run_and_collect(topo, mode="inproc")["store"]
    assert [n for n, _ in rows] == list(range(30))
    assert all(started <= n + 4 for n, started in rows)


@pytest.mark.parametrize("mode", MODES)
def test_errors_inside_async_code_follow_each_policy(mode):
    topo = Topology("policies")

    @topo.source
    def numbers():
        yield from range(40)

    attempts: dict[int, int] = {}

    @topo.node(inputs=numbers, concurrency=10, retries=2, retry_backoff_s=0.001, on_error="dead_letter")
    async def flaky(n):
        attempts[n] = attempts.get(n, 0) + 1
        await asyncio.sleep(0)
        if n % 10 == 3:
            raise ValueError(f"bad {n}")
        if n % 10 == 5 and attempts[n] < 3:
            raise ConnectionError("again")
        return n

    @topo.sink(inputs=flaky)
    def store(n):
        pass

    @topo.sink(inputs=flaky.errors)
    def letters(letter):
        pass

    result = run_and_collect(topo, mode=mode)
    assert result["store"] == [n for n in range(40) if n % 10 != 3]
    dead = result["letters"]
    assert sorted(letter.item for letter in dead) == [3, 13, 23, 33]
    assert all(isinstance(letter, DeadLetter) and letter.attempts == 3 and letter.error_type == "ValueError"
               and letter.node == "flaky" for letter in dead)


def test_skip_policy_in_a_threaded_node_drops_the_failing_items_only():
    topo = Topology("skip")

    @topo.source
    def numbers():
        yield from range(30)

    @topo.node(inputs=numbers, concurrency=4, on_error="skip")
    def halve(n):
        if n % 7 == 0:
            raise ZeroDivisionError(n)
        return n // 2

    @topo.sink(inputs=halve)
    def store(n):
        pass

    result = run_and_collect(topo, mode="inproc")
    assert result["store"] == [n // 2 for n in range(30) if n % 7]
    assert result.report["halve"].skipped == 5


@pytest.mark.parametrize("mode", MODES)
def test_an_error_in_async_code_fails_the_run_naming_the_item_and_the_traceback(mode):
    topo = Topology("fails")

    @topo.source
    def numbers():
        yield from range(100)

    @topo.node(inputs=numbers, concurrency=16)
    async def boom(n):
        await asyncio.sleep(0)
        if n == 42:
            raise KeyError("the answer")
        return n

    @topo.sink(inputs=boom)
    def store(n):
        pass

    with pytest.raises(RunFailed) as raised:
        run_and_collect(topo, mode=mode)
    failure = raised.value
    assert failure.node == "boom" and "KeyError" in str(failure) and "42" in str(failure)
    assert "raise KeyError" in failure.remote_traceback


@pytest.mark.parametrize("mode", MODES)
def test_async_setup_finish_and_teardown_run_on_the_replicas_loop_and_finish_waits_for_every_item(mode, tmp_path):
    marker = tmp_path / "teardown"
    topo = Topology("phases")

    @topo.source
    def numbers():
        yield from range(50)

    class Count:
        async def setup(self):
            self.loop = asyncio.get_running_loop()
            self.done = 0

        async def process(self, n):
            assert asyncio.get_running_loop() is self.loop
            await asyncio.sleep(0.001 * (n % 3))
            self.done += 1
            return n

        async def finish(self):
            yield ("done", self.done)

        async def teardown(self):
            marker.write_text("ran")

    topo.node(Count, inputs=numbers, name="count", concurrency=10)

    @topo.sink(inputs="count")
    def store(row):
        pass

    rows = run_and_collect(topo, mode=mode)["store"]
    assert rows == [*range(50), ("done", 50)]
    assert marker.read_text() == "ran"


def test_a_sink_with_concurrency_gets_every_item():
    topo = Topology("sink")

    @topo.source
    def numbers():
        yield from range(100)

    @topo.sink(inputs=numbers, concurrency=5)
    async def store(n):
        await asyncio.sleep(0)

    result = run_and_collect(topo, mode="inproc")
    assert result["store"] == list(range(100))
    assert result.report["store"].items_in == 100


def test_concurrency_must_be_a_positive_integer():
    from flowgraph import TopologyError

    topo = Topology("bad")

    @topo.source
    def numbers():
        yield 1

    with pytest.raises(TopologyError, match="node 'work' has concurrency 0; it must be an integer >= 1"):
        topo.node(lambda n: n, inputs=numbers, name="work", concurrency=0)
    with pytest.raises(TopologyError, match="ordered='yes'; it must be True or False"):
        topo.node(lambda n: n, inputs=numbers, name="work", ordered="yes")


def test_an_async_replica_killed_with_sigkill_is_restarted_and_every_item_arrives(tmp_path):
    """With restarts, an input batch is acknowledged once all its items left; the items in flight at the kill
    come again (at least once)."""
    marker = tmp_path / "killed"
    topo = Topology("restart-async")

    @topo.source
    def numbers():
        yield from range(2000)

    @topo.node(inputs=numbers, concurrency=16, parallelism=2)
    async def work(n):
        await asyncio.sleep(0)
        if n == 700:
            try:
                descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return n
            os.close(descriptor)
            os.kill(os.getpid(), signal.SIGKILL)
        return n

    @topo.sink(inputs=work)
    def store(n):
        pass

    result = run_and_collect(topo, mode="local", restarts=1)
    received = result["store"]
    assert set(received) == set(range(2000))
    assert sum(r.restarts for r in result.report["work"].replicas) == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_concurrent_class_node_checkpointed_often_keeps_its_state_exact(mode, tmp_path):
    """At a barrier every item in flight completes first, so the state a checkpoint takes has them all."""
    topo = Topology("checkpointed")

    @topo.source
    def numbers():
        for n in range(3000):
            if n % 50 == 0:
                time.sleep(0.002)  # a run of over 0.1 s: checkpoints every 0.01 s complete in it
            yield n

    class Sum:
        def setup(self):
            self.total = 0
            self.count = 0

        async def process(self, n):
            await asyncio.sleep(0)
            self.total += n
            self.count += 1

        def finish(self):
            yield self.count, self.total

    topo.node(Sum, inputs=numbers, name="sum", concurrency=8)

    @topo.sink(inputs="sum")
    def store(row):
        pass

    result = run_and_collect(topo, mode=mode, checkpoint=str(tmp_path / "ckpt"), checkpoint_interval_s=0.01)
    assert result["store"] == [(3000, sum(range(3000)))]
    assert result.report.checkpoints_s
