"""Runs over remote hosts: real sshd in network namespaces (bin/testhosts), CURVE, heartbeats."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from flowgraph import HostError, RunFailed, Topology, by_key, context, run
from flowgraph.model.hosts import Host, parse_hosts, read_hosts_file
from flowgraph.testing import assert_same_items, run_and_collect
from helpers import SLOW_TOPOLOGY, Cli, run_cli, still_running, write_topology
from test_equivalence import ordered_sinks, random_dag
from test_loops import random_loop_topology


def over(test_hosts, *names: str) -> dict:
    """``run`` keywords that spread a run over ``names`` (default: all test hosts)."""
    return {"hosts": list(names or test_hosts.names), "ssh_config": test_hosts.ssh_config,
            "remote_python": sys.executable}


@pytest.mark.parametrize("seed", [0, 5, 7])
def test_random_dags_reach_the_same_sinks_locally_and_over_three_hosts(test_hosts, seed):
    topo = random_dag(seed)
    local = run_and_collect(topo, mode="local")
    remote = run_and_collect(topo, mode="local", **over(test_hosts))
    for sink in local:
        assert_same_items(remote[sink], local[sink])
    for sink in ordered_sinks(topo):
        assert_same_items(remote[sink], local[sink], ordered=True)


@pytest.mark.parametrize("seed", [2, 6])
def test_random_topologies_with_loops_reach_the_same_sinks_locally_and_over_three_hosts(test_hosts, seed):
    topo = random_loop_topology(seed)
    local = run_and_collect(topo, mode="local")
    remote = run_and_collect(topo, mode="local", **over(test_hosts))
    for sink in local:
        assert_same_items(remote[sink], local[sink])


def test_order_by_key_and_context_host_hold_across_hosts(test_hosts):
    topo = Topology("spread")

    @topo.source
    def numbers():
        yield from range(3000)

    @topo.node(inputs=numbers)
    def relay(n):
        return n

    @topo.node(inputs={relay: by_key(lambda n: n % 11)}, parallelism=3)
    def tag(n):
        return (n, n % 11, context().replica, context().host)

    @topo.sink(inputs=relay)
    def ordered(n):
        pass

    @topo.sink(inputs=tag)
    def tagged(row):
        pass

    result = run_and_collect(topo, **over(test_hosts))
    assert result["ordered"] == list(range(3000))
    rows = result["tagged"]
    assert sorted(n for n, *_ in rows) == list(range(3000))
    placement = {(replica, host) for _, _, replica, host in rows}
    assert {host for _, host in placement} <= set(test_hosts.names) and len({h for _, h in placement}) > 1
    for key in range(11):
        assert len({(replica, host) for _, k, replica, host in rows if k == key}) == 1


def test_the_cli_prefixes_remote_output_with_node_replica_and_host(test_hosts, tmp_path):
    path = write_topology(tmp_path, """
        from flowgraph import Topology, context

        topo = Topology("hello")

        @topo.source(parallelism=3)
        def hello():
            print("hello from", context().host)
            yield 1

        @topo.sink(inputs=hello)
        def store(n):
            pass
    """)
    code, _, stderr = run_cli("run", str(path), *test_hosts.options())
    assert code == 0, stderr
    for line in ("[hello/0@h1] hello from h1", "[hello/1@h2] hello from h2", "[hello/2@h3] hello from h3"):
        assert line in stderr
    assert "topology 'hello' (hosts)" in stderr


def test_a_hosts_file_sets_python_slots_and_localhost(test_hosts, tmp_path):
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text(f"# test hosts\nh1 python={sys.executable} slots=2\nlocalhost\n")
    topo = Topology("slots")

    @topo.source(parallelism=3)
    def where():
        yield context().host

    topo.sink(lambda host: None, inputs=where, name="store")
    result = run_and_collect(topo, hosts=f"@{hosts_file}", ssh_config=test_hosts.ssh_config)
    assert sorted(result["store"]) == ["h1", "h1", "localhost"]


def test_a_pinned_node_runs_only_on_its_hosts(test_hosts):
    topo = Topology("pinned")

    @topo.source(parallelism=2)
    def where():
        yield ("source", context().host)

    @topo.node(inputs=where, parallelism=3, hosts=["h3"])
    def pinned(row):
        return (row, context().host)

    topo.sink(lambda row: None, inputs=pinned, name="store")
    rows = run_and_collect(topo, **over(test_hosts, "h1", "h2"))["store"]
    assert sorted(source for source, _ in rows) == [("source", "h1"), ("source", "h2")]
    assert {host for _, host in rows} == {"h3"}


def test_a_host_whose_processes_are_killed_fails_the_run_naming_it(test_hosts, tmp_path):
    path = write_topology(tmp_path, SLOW_TOPOLOGY)
    try:
        with Cli("run", str(path), *test_hosts.options()) as cli:
            cli.wait_for_line("sink is working")
            test_hosts.kill_everything_in("h2")
            assert cli.wait(30) == 1
            assert re.search(r"flowgraph: error: node '(work|Store)' replica \d on h2 died: "
                             r"lost its ssh connection to h2", cli.output), cli.output
    finally:
        test_hosts.restart_sshd("h2")


@pytest.mark.slow
def test_a_host_cut_off_the_network_fails_the_run_and_its_workers_exit(test_hosts, tmp_path):
    path = write_topology(tmp_path, SLOW_TOPOLOGY)
    with Cli("run", str(path), *test_hosts.options()) as cli:
        cli.wait_for_line("sink is working")
        on_h3 = test_hosts.pids("h3")
        cut = [p for p in test_hosts.workers() if p.pid in on_h3 and "flowgraph worker" in " ".join(p.cmdline())]
        assert cut
        test_hosts.set_link("h3", "down")
        try:
            assert cli.wait(30) == 1
            assert re.search(r"replica \d on h3 (stopped answering: no heartbeat for 3 s|died: lost its ssh "
                             r"connection to h3)", cli.output), cli.output
            assert still_running(cut, timeout_s=10) == []
        finally:
            test_hosts.set_link("h3", "up")


def test_remote_workers_exit_when_the_launcher_is_killed(test_hosts, tmp_path):
    path = write_topology(tmp_path, SLOW_TOPOLOGY)
    with Cli("run", str(path), *test_hosts.options()) as cli:
        cli.wait_for_line("sink is working")
        remote = test_hosts.workers()
        assert any("flowgraph worker" in " ".join(p.cmdline()) for p in remote)
        cli.signal(signal.SIGKILL)
        assert still_running(remote, timeout_s=10) == []


def test_ctrl_c_stops_every_remote_worker(test_hosts, tmp_path):
    path = write_topology(tmp_path, SLOW_TOPOLOGY)
    with Cli("run", str(path), *test_hosts.options()) as cli:
        cli.wait_for_line("sink is working")
        cli.signal(signal.SIGINT)
        assert cli.wait(15) == 130
    assert still_running(test_hosts.workers(), timeout_s=5) == []


def test_strangers_on_remote_data_ports_are_rejected_by_curve(test_hosts, tmp_path):
    release = tmp_path / "release"
    os.mkfifo(release)
    path = write_topology(tmp_path, """
        from flowgraph import Topology, context

        topo = Topology("guarded")

        @topo.source
        def numbers():
            print("waiting for release", flush=True)
            with open(context().params["release"]) as fifo:
                fifo.read()
            yield from range(2000)

        @topo.node(inputs=numbers, parallelism=3)
        def double(n):
            return n * 2

        @topo.sink(inputs=double)
        class Store:
            def setup(self):
                self.total = 0

            def process(self, n):
                self.total += n

            def finish(self):
                print("total", self.total, flush=True)
    """)
    strangers = []
    context = zmq.Context()
    with Cli("run", str(path), "--set", f"release={release}", *test_hosts.options()) as cli:
        try:
            cli.wait_for_line("waiting for release")
            targets = [(test_hosts.address(name), port) for name in test_hosts.names
                       for port in test_hosts.listening_ports(name)]
            assert len(targets) == 5  # the PULL of double/0..2 and of Store/0, the credit socket of numbers/0
            for address, port in targets:
                subprocess.run([sys.executable, "-c",
                                "import socket, os, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])));"
                                "s.sendall(b'\\xff' + os.urandom(300)); s.close()", address, str(port)],
                               check=True, timeout=10)
                plain = context.socket(zmq.PUSH)
                wrong_key = context.socket(zmq.PUSH)
                server_public, _ = zmq.curve_keypair()
                wrong_key.curve_serverkey = server_public
                wrong_key.curve_publickey, wrong_key.curve_secretkey = zmq.curve_keypair()
                for stranger in (plain, wrong_key):
                    stranger.linger = 0
                    stranger.connect(f"tcp://{address}:{port}")
                    stranger.send(b"garbage", zmq.NOBLOCK)
                    strangers.append(stranger)
            with open(release, "w") as fifo:
                fifo.write("go")
            assert cli.wait(60) == 0, cli.output
        finally:
            for stranger in strangers:
                stranger.close(linger=0)
            context.term()
    assert f"total {sum(n * 2 for n in range(2000))}" in cli.output
    assert "rejected a connection to" in cli.output


def test_an_unreachable_host_is_named_before_anything_starts(test_hosts, tmp_path):
    path = write_topology(tmp_path, SLOW_TOPOLOGY)
    started = time.monotonic()
    code, _, stderr = run_cli("run", str(path), "--hosts", f"h1,{test_hosts.subnet}.99",
                              "--ssh-config", test_hosts.ssh_config, "--remote-python", sys.executable)
    assert code == 2
    assert f"flowgraph: error: cannot reach host '{test_hosts.subnet}.99' over ssh" in stderr
    assert time.monotonic() - started < 30  # a hang guard; ssh's ConnectTimeout is 5 s


def test_a_host_without_flowgraph_or_with_another_version_is_named(test_hosts, tmp_path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True, timeout=60)
    bare_python = str(tmp_path / "bare" / "bin" / "python")
    topo = Topology("versions")
    topo.source(lambda: iter(()), name="nothing")
    with pytest.raises(HostError, match="host 'h1' has no flowgraph for '.*bare/bin/python' "
                                        r"\(the launcher has 0\.1\.0\); install flowgraph 0\.1\.0 there"):
        run(topo, hosts=["h1"], ssh_config=test_hosts.ssh_config, remote_python=bare_python)
    site = next((tmp_path / "bare" / "lib").glob("python3*")) / "site-packages" / "flowgraph"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text('__version__ = "0.0.1"\n')
    with pytest.raises(HostError, match=r"host 'h1' has flowgraph 0.0.1 for .*, the launcher has 0.1.0"):
        run(topo, hosts=["h1"], ssh_config=test_hosts.ssh_config, remote_python=bare_python)


def test_a_failing_remote_node_names_its_host_and_traceback(test_hosts):
    topo = Topology("failing")

    @topo.source
    def numbers():
        yield from range(100)

    @topo.node(inputs=numbers, parallelism=3)
    def parse(n):
        if n == 42:
            raise ValueError(f"bad {n} on {context().host}")
        return n

    topo.sink(lambda n: None, inputs=parse, name="store")
    with pytest.raises(RunFailed) as caught:
        run(topo, **over(test_hosts))
    failure = caught.value
    assert failure.host in test_hosts.names and failure.node == "parse"
    assert f"ValueError: bad 42 on {failure.host}" in str(failure)
    assert "test_hosts.py" in failure.remote_traceback


def test_host_names_and_hosts_files_are_parsed_and_bad_ones_named(tmp_path):
    assert [h.name for h in parse_hosts("alice@10.0.0.2, 10.0.0.3:2222,localhost")] == [
        "alice@10.0.0.2", "10.0.0.3:2222", "localhost"]
    host = parse_hosts("bob@example.org:2200")[0]
    assert (host.destination, host.port) == ("bob@example.org", 2200)
    hosts = tmp_path / "hosts"
    hosts.write_text("a python=/opt/py slots=3 # comment\n\n b address=10.1.1.1\n")
    assert read_hosts_file(str(hosts)) == (Host("a", python="/opt/py", slots=3), Host("b", address="10.1.1.1"))
    hosts.write_text("a colour=blue\n")
    with pytest.raises(HostError, match=f"{hosts}:1: 'colour=blue' is not a host setting"):
        read_hosts_file(str(hosts))
    with pytest.raises(HostError, match="'bad host' is not a host"):
        parse_hosts(["bad host"])
    with pytest.raises(HostError, match="cannot read hosts file"):
        parse_hosts(f"@{Path(tmp_path / 'missing')}")


def test_the_crawl_example_runs_over_hosts(test_hosts, tmp_path):
    crawl = Path(__file__).resolve().parents[1] / "topologies" / "crawl.py"
    db = tmp_path / "crawl.db"  # the hosts share this machine's files; their working directory is ~
    code, _, stderr = run_cli("run", str(crawl), "--set", f"db={db}", *test_hosts.options(), cwd=tmp_path)
    assert code == 0, stderr
    assert f"stored 45 pages in table 'pages' of {db}" in stderr
