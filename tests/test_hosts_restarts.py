"""Restarts over the sshd test hosts: a host cut off the network or pulled from the wall mid-run."""

from __future__ import annotations

import collections
import re
import time

import pytest

from helpers import Cli, still_running, write_topology

COUNT = 30_000

RECORDING = f"""
    import os
    import time
    from flowgraph import Topology, context

    topo = Topology("survivor")

    @topo.source(hosts=["localhost"])
    def numbers():
        for n in range({COUNT}):
            if n % 100 == 0:
                time.sleep(0.01)  # a run of a few seconds, so a host can go in the middle of it
            yield n

    @topo.node(inputs=numbers, parallelism=3)
    def work(n):
        return (n, os.getpid())

    @topo.sink(inputs=work, parallelism=2, hosts=["localhost"])
    class Store:
        restartable = True

        def setup(self):
            path = os.path.join(context().params["out"], f"store-{{os.getpid()}}")
            self.fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY)
            self.told = False

        def process(self, item):
            n, origin = item
            os.write(self.fd, f"{{n}} {{origin}} {{time.time()}}\\n".encode())
            if n > 3000 and not self.told:
                self.told = True
                print("sink is working", flush=True)

        def teardown(self):
            os.close(self.fd)
"""


def recorded(directory) -> list[tuple[int, int, float]]:
    rows = []
    for path in directory.glob("store-*"):
        for line in path.read_text().splitlines():
            n, origin, at = line.split()
            rows.append((int(n), int(origin), float(at)))
    return rows


def worker_pids(test_hosts, name: str) -> list:
    on_host = set(test_hosts.pids(name))
    return [p for p in test_hosts.workers() if p.pid in on_host and "flowgraph worker" in " ".join(p.cmdline())]


@pytest.mark.slow
def test_a_host_cut_off_the_network_is_replaced_and_its_zombie_delivers_nothing(test_hosts, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    path = write_topology(tmp_path, RECORDING)
    with Cli("run", str(path), *test_hosts.options(), "--restarts", "2", "--set", f"out={out}") as cli:
        cli.wait_for_line("sink is working", timeout_s=60)
        cut = worker_pids(test_hosts, "h3")
        assert len(cut) == 1
        zombie = cut[0].pid
        test_hosts.set_link("h3", "down")
        try:
            line = cli.wait_for_line(r"restarting work/\d \(incarnation 1\)", timeout_s=20)
            replaced_at = time.time()
        finally:
            time.sleep(1)
            test_hosts.set_link("h3", "up")  # the zombie may now send what it still had: it must be dropped
        assert cli.wait(120) == 0, cli.output
        output = cli.output
    assert "stopped answering: no heartbeat for 3 s" in line or "lost its ssh connection to h3" in line
    rows = recorded(out)
    seen = collections.Counter(n for n, _, _ in rows)
    assert set(seen) == set(range(COUNT))
    late = [row for row in rows if row[1] == zombie and row[2] > replaced_at + 0.5]
    assert late == [], f"the zombie delivered {len(late)} items after its replacement started"
    assert re.search(r"restarted work/\d 1 time: (stopped answering|died: lost its ssh connection)", output)
    assert still_running(cut, timeout_s=15) == []


@pytest.mark.slow
def test_a_host_whose_processes_all_die_is_replaced_and_the_run_completes(test_hosts, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    path = write_topology(tmp_path, RECORDING)
    with Cli("run", str(path), *test_hosts.options(), "--restarts", "2", "--set", f"out={out}") as cli:
        cli.wait_for_line("sink is working", timeout_s=60)
        test_hosts.kill_everything_in("h2")  # its sshd too: nothing can start there any more
        try:
            assert cli.wait(120) == 0, cli.output
        finally:
            test_hosts.restart_sshd("h2")
        output = cli.output
    assert {n for n, _, _ in recorded(out)} == set(range(COUNT))
    assert re.search(r"restarted work/\d 1 time", output)
    rows = [line for line in output.splitlines() if re.match(r"\s+/\d@h\d\s", line)]
    assert len(rows) == 3 and not any("@h2 " in row for row in rows), "the replaced replica runs on another host"
