"""Backpressure: a slow consumer slows its producers, and memory stays bounded per edge."""

from __future__ import annotations

import os

import pytest

from flowgraph import BufferSettings, Topology
from flowgraph.model.plan import plan_run
from flowgraph.testing import run_and_collect
from helpers import Cli, PeakRss, write_topology


def test_a_slow_sink_holds_the_source_back_to_the_buffer_bound(tmp_path, mode):
    progress = tmp_path / "progress"
    progress.write_bytes((0).to_bytes(8, "big"))
    path = str(progress)
    topo = Topology("slow")

    @topo.source
    def numbers():
        with open(path, "rb") as counter:
            for n in range(1500):
                yield (n, int.from_bytes(os.pread(counter.fileno(), 8, 0), "big"), b"x" * 10_000)

    @topo.sink(inputs=numbers)
    class Store:
        def setup(self):
            self.counter = open(path, "r+b")
            self.done = 0

        def process(self, item):
            self.done += 1
            os.pwrite(self.counter.fileno(), self.done.to_bytes(8, "big"), 0)

        def teardown(self):
            self.counter.close()

    buffers = BufferSettings(batch_items=16, hwm=1, socket_buffer_bytes=64 * 1024)
    result = run_and_collect(topo, mode=mode, buffers=buffers)
    ahead = [n - sink_done for n, sink_done, _ in result["Store"]]
    batches, kernel_bytes, _ = buffers.pair_bound()
    assert max(ahead) <= batches * buffers.batch_items + kernel_bytes // 10_000
    assert len(ahead) == 1500


@pytest.mark.slow
def test_two_gigabytes_through_a_slow_sink_keep_total_memory_far_below_the_stream(tmp_path):
    path = write_topology(tmp_path, """
        import time
        from flowgraph import Topology

        topo = Topology("big-stream")

        @topo.source
        def blobs():
            block = bytes(100_000)
            for n in range(20_000):
                yield block

        @topo.node(inputs=blobs)
        def measure(blob):
            return blob

        @topo.sink(inputs=measure)
        class Store:
            def setup(self):
                self.total = 0

            def process(self, blob):
                self.total += len(blob)
                time.sleep(0.0001)

            def finish(self):
                print("stored bytes", self.total)
    """)
    with Cli("run", str(path)) as cli, PeakRss(cli.process.pid) as rss:
        assert cli.wait(180) == 0, cli.output
    assert "stored bytes 2000000000" in cli.output
    assert 0 < rss.peak < 500 * 1024 * 1024, f"peak total RSS {rss.peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("hwm", [1, 3])
def test_hwm_option_sets_every_data_socket(hwm):
    topo = Topology("hwm")

    @topo.source
    def numbers():
        yield from range(100)

    @topo.sink(inputs=numbers)
    def store(n):
        pass

    assert topo.check().buffers.effective_hwm == 8
    assert plan_run(topo.spec(), hwm=hwm).buffers.effective_hwm == hwm
    assert sorted(run_and_collect(topo, mode="inproc", hwm=hwm)["store"]) == list(range(100))
