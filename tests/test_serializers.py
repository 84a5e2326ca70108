"""pickle's out-of-band buffers and the one-frame message, from the encoder to items through real runs."""

from __future__ import annotations

import os

import numpy
import pytest
import zmq

from flowgraph import Topology
from flowgraph.testing import run_and_collect
from flowgraph.wire import frames as wire
from flowgraph.wire.serializers import OUT_OF_BAND_BYTES, PickleEncoder, decode_items

BIG = OUT_OF_BAND_BYTES


def large_items() -> list:
    return [
        os.urandom(BIG),
        bytearray(os.urandom(BIG + 1)),
        {"url": "http://example.com/", "body": os.urandom(BIG * 2)},
        (7, bytearray(BIG)),
        memoryview(os.urandom(BIG)),
        memoryview(bytearray(4 * BIG)).cast("i", (BIG // 2, 2)),
        numpy.arange(BIG, dtype=numpy.float64).reshape(BIG // 8, 8),
    ]


def same(sent, received) -> bool:
    if type(sent) is not type(received):
        return False
    if isinstance(sent, numpy.ndarray):
        return sent.dtype == received.dtype and numpy.array_equal(sent, received)
    if isinstance(sent, memoryview):
        return (sent.format, sent.shape, sent.tobytes()) == (received.format, received.shape, received.tobytes())
    return sent == received


def test_large_buffers_leave_the_pickle_as_frames_of_their_own():
    items = large_items()
    frames = PickleEncoder().encode(items)
    sizes = sorted(memoryview(frame).nbytes for frame in frames[1:])
    assert sizes == sorted([BIG, BIG + 1, 2 * BIG, BIG, BIG, 4 * BIG, BIG * 8])
    assert len(frames[0]) < 2_000, "a large buffer was copied into the pickle"
    received = decode_items(0, frames)
    assert all(same(a, b) for a, b in zip(items, received, strict=True))
    assert received[5].readonly and received[4].readonly


def test_small_buffers_and_large_batches_stay_in_the_pickle():
    encoder = PickleEncoder()
    small = [b"x" * 100, bytearray(10), memoryview(b"abc"), numpy.zeros(3)]
    frames = encoder.encode(small)
    assert len(frames) == 1
    assert all(same(a, b) for a, b in zip(small, decode_items(0, frames), strict=True))
    many = [b"y" * BIG] * 17  # a batch of many items: its bytes are not searched
    frames = encoder.encode(many)
    assert len(frames) == 1 and decode_items(0, frames) == many


def test_a_small_payload_travels_in_the_header_frame_and_splits_back():
    token = os.urandom(wire.TOKEN_BYTES)
    header = wire.encode_header(token, wire.Kind.BATCH, 0, 1, 2, 0, 0, 3, 4)
    small, large = [b"payload"], [b"p" * (wire.INLINE_BYTES + 1)]
    assert wire.message(header, small) == [header + b"payload"]
    assert wire.message(header, large) == [header, *large]
    context = zmq.Context.instance()
    with context.socket(zmq.PAIR) as sender, context.socket(zmq.PAIR) as receiver:
        receiver.bind("inproc://flowgraph-test-split")
        sender.connect("inproc://flowgraph-test-split")
        for payload in (small, large, [b"pickle", b"buffer"]):
            sender.send_multipart(wire.message(header, payload))
            got_header, got_payload = wire.split(receiver.recv_multipart(copy=False))
            assert wire.decode_header(token, got_header) == (wire.Kind.BATCH, 0, 1, 2, 0, 0, 3, 4)
            assert [bytes(frame) for frame in got_payload] == payload
        sender.send(header)
        assert wire.split(receiver.recv_multipart(copy=False)) == (header, [])


def test_large_items_cross_processes_intact_and_keep_their_types(mode):
    topo = Topology("buffers")
    sent = large_items()
    topo.source(lambda: iter(large_items()), name="blobs")
    topo.node(lambda item: item, inputs="blobs", name="relay", parallelism=2)
    topo.sink(lambda item: None, inputs="relay", name="store")
    received = run_and_collect(topo, mode=mode)["store"]
    assert len(received) == len(sent)
    kinds = sorted(type(item).__name__ for item in received)
    assert kinds == sorted(type(item).__name__ for item in sent)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "ndarray"])
def test_each_kind_of_large_buffer_arrives_equal(mode, kind):
    topo = Topology("one-kind")
    make = {
        "bytes": lambda n: bytes([n]) * BIG,
        "bytearray": lambda n: bytearray([n]) * BIG,
        "memoryview": lambda n: memoryview(bytearray([n]) * BIG * 4).cast("i"),
        "ndarray": lambda n: numpy.full((BIG // 8, 2), n, dtype=numpy.int32),
    }[kind]
    topo.source(lambda: (make(n) for n in range(6)), name="blobs")
    topo.node(lambda item: item, inputs="blobs", name="relay")
    topo.sink(lambda item: None, inputs="relay", name="store")
    received = run_and_collect(topo, mode=mode)["store"]
    expected = [make(n) for n in range(6)]
    assert len(received) == 6
    ordered = sorted(received, key=lambda item: bytes(memoryview(item).cast("B")[:1]))
    assert all(same(a, b) for a, b in zip(expected, ordered, strict=True))
