"""Strangers on data and control ports: rejected and logged, nothing unpickled, the run still correct."""

from __future__ import annotations

import os
import pickle
import socket

import psutil
import zmq

from flowgraph.wire import frames as wire
from flowgraph.wire.control import Envelope, Stop, decode_control, encode_control
from flowgraph.wire.keys import key_bytes, replica_for_key
from helpers import Cli, write_topology

TOPOLOGY = """
    import os
    from flowgraph import Topology, broadcast, context

    topo = Topology("guarded")

    @topo.source
    def numbers():
        print("waiting for release", flush=True)
        with open(context().params["release"]) as fifo:
            fifo.read()
        yield from range(3000)

    @topo.node(inputs=numbers, parallelism=2)
    def double(n):
        return n * 2

    @topo.node(inputs={double: broadcast()}, parallelism=2)
    def relay(n):
        return n

    @topo.sink(inputs=relay)
    class Store:
        def setup(self):
            self.total = self.count = 0

        def process(self, n):
            self.count += 1
            self.total += n

        def finish(self):
            print("stored", self.count, "items, total", self.total, flush=True)
"""


def listening_ports(processes: list[psutil.Process]) -> set[int]:
    ports = set()
    for process in processes:
        for connection in process.net_connections(kind="tcp"):
            if connection.status == psutil.CONN_LISTEN:
                ports.add(connection.laddr.port)
    return ports


def attack(port: int, marker: str) -> list[zmq.Socket]:
    """Send every kind of garbage to ``port``; returns the stranger sockets to check and close."""
    for payload in (os.urandom(512), b"\xff" + os.urandom(512), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(payload)
    context = zmq.Context.instance()
    evil = pickle.dumps([_EvilFactory(marker)])
    forged_header = wire.encode_header(os.urandom(wire.TOKEN_BYTES), wire.Kind.BATCH, 0, 0, 0, 0, 0, 0, 1)
    strangers = []
    for kind in (zmq.PUSH, zmq.DEALER):
        stranger = context.socket(kind)
        stranger.linger = 0
        stranger.connect(f"tcp://127.0.0.1:{port}")
        for frames in ([b"garbage"], [forged_header, evil], [b"FGC1" + bytes(16), b"done", b"{}", evil],
                       [os.urandom(37), os.urandom(100)]):
            stranger.send_multipart(frames, zmq.NOBLOCK)
        strangers.append(stranger)
    listener = context.socket(zmq.SUB)
    listener.linger = 0
    listener.connect(f"tcp://127.0.0.1:{port}")
    listener.setsockopt(zmq.SUBSCRIBE, b"")
    strangers.append(listener)
    return strangers


class _EvilFactory:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_garbage_on_every_port_is_rejected_logged_and_the_run_completes(tmp_path):
    path = write_topology(tmp_path, TOPOLOGY)
    release = tmp_path / "release"
    os.mkfifo(release)
    marker = tmp_path / "unpickled"
    strangers: list[zmq.Socket] = []
    with Cli("run", str(path), "--set", f"release={release}") as cli:
        try:
            cli.wait_for_line("waiting for release")
            launcher = psutil.Process(cli.process.pid)
            ports = listening_ports([launcher, *cli.descendants()])
            # control; PULL and XPUB of double/0 and double/1; PULL of Store/0; credit socket of numbers/0
            assert len(ports) == 1 + 2 * 2 + 1 + 1
            for port in sorted(ports):
                strangers += attack(port, str(marker))
            with open(release, "w") as fifo:
                fifo.write("go")
            assert cli.wait(60) == 0, cli.output
        finally:
            listened = [s.poll(0) for s in strangers if s.type == zmq.SUB]
            for stranger in strangers:
                stranger.close(linger=0)
        output = cli.output
    expected_total = sum(n * 2 for n in range(3000)) * 2
    assert f"stored 6000 items, total {expected_total}" in output
    assert not marker.exists(), "a stranger's pickle was unpickled"
    assert "-frame message that is not from this run" in output
    assert "rejected a control message not from this run" in output
    assert "rejected a connection to" in output
    assert listened == [0] * len(listened), "a stranger's SUB received data"


def test_frames_without_the_runs_token_are_never_decoded():
    token = os.urandom(wire.TOKEN_BYTES)
    header = wire.encode_header(token, wire.Kind.BATCH, 1, 1, 2, 1, 7, 3, 4)
    assert wire.decode_header(token, header) == wire.Header(wire.Kind.BATCH, 1, 1, 2, 1, 7, 3, 4)
    assert wire.decode_header(token, wire.encode_header(token, wire.Kind.BATCH, 9, 1, 2, 1, 7, 3, 4)) is None
    assert wire.decode_header(os.urandom(wire.TOKEN_BYTES), header) is None
    assert wire.decode_header(token, header[:-1]) is None
    assert wire.decode_header(token, b"x" * len(header)) is None
    control = encode_control(token, Stop("done"), replica="a/0", attachment=[1, 2], incarnation=3)
    assert decode_control(token, control) == Envelope(Stop("done"), "a/0", [1, 2], 3)
    assert decode_control(os.urandom(wire.TOKEN_BYTES), control) is None
    assert decode_control(token, [control[0], b"\xff", b"{}"]) is None
    assert decode_control(token, [control[0], b"stop", b"[1]"]) is None
    assert decode_control(token, [control[0], b"stop", b'{"because": "no such field"}']) is None


def test_by_key_hash_is_the_same_in_processes_with_different_hash_seeds():
    import subprocess
    import sys

    keys = ["url", "", "é", b"bytes", 7, -3, 2.5, True, None, ("a", 1)]
    expected = [replica_for_key(key, 7) for key in keys]
    for seed in ("1", "2", "random"):
        output = subprocess.run(
            [sys.executable, "-c",
             "from flowgraph.wire.keys import replica_for_key;"
             f"print([replica_for_key(k, 7) for k in {keys!r}])"],
            env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        assert output.strip() == str(expected)
    assert key_bytes(1) != key_bytes("1") and key_bytes(("a", "bc")) != key_bytes(("ab", "c"))
