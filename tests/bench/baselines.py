"""Hand-written pipelines flowgraph is compared with: source -> map -> sink, three processes.

    python baselines.py zmq-batched N     pyzmq PUSH/PULL over tcp, 256 items per message, pickle 5
    python baselines.py zmq-items N       pyzmq, one pickled item per message
    python baselines.py mp-queue N        multiprocessing.Queue, one item per put, a sentinel at the end
    python baselines.py zmq-bytes N SIZE  pyzmq, SIZE-byte items, pickle 5 out-of-band, zero-copy frames
    python baselines.py zmq-latency N RATE
                                          pyzmq, one item per message at RATE items/s; prints p50/p99 JSON

Written the way the ZeroMQ guide and the multiprocessing docs show them, with
the same items as the flowgraph benchmark: {"id", "url", "score"} dicts,
the map adds 1 to the score. Each prints nothing (but the latency one);
time the whole command.
"""

from __future__ import annotations

import json
import multiprocessing
import pickle
import sys
import time

import zmq

BATCH = 256
END = b""


def item(n: int) -> dict:
    return {"id": n, "url": f"http://example.com/{n}", "score": n * 0.5}


def zmq_source(endpoint: str, count: int, batched: bool) -> None:
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.connect(endpoint)
    if batched:
        batch = []
        for n in range(count):
            batch.append(item(n))
            if len(batch) == BATCH:
                push.send(pickle.dumps(batch, protocol=5))
                batch = []
        if batch:
            push.send(pickle.dumps(batch, protocol=5))
    else:
        for n in range(count):
            push.send(pickle.dumps(item(n), protocol=5))
    push.send(END)
    push.close(linger=-1)
    context.term()


def zmq_map(ports: multiprocessing.Queue, push_endpoint: str, batched: bool) -> None:
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    ports.put(pull.bind_to_random_port("tcp://127.0.0.1"))
    push = context.socket(zmq.PUSH)
    push.connect(push_endpoint)
    while True:
        message = pull.recv()
        if message == END:
            break
        if batched:
            batch = pickle.loads(message)
            for one in batch:
                one["score"] += 1
            push.send(pickle.dumps(batch, protocol=5))
        else:
            one = pickle.loads(message)
            one["score"] += 1
            push.send(pickle.dumps(one, protocol=5))
    push.send(END)
    push.close(linger=-1)
    pull.close()
    context.term()


def zmq_sink(ports: multiprocessing.Queue, batched: bool) -> None:
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    ports.put(pull.bind_to_random_port("tcp://127.0.0.1"))
    received = 0
    while True:
        message = pull.recv()
        if message == END:
            break
        received += len(pickle.loads(message)) if batched else 1
    pull.close()
    context.term()


def run_zmq(count: int, batched: bool) -> None:
    spawn = multiprocessing.get_context("spawn")
    ports = spawn.Queue()
    sink = spawn.Process(target=zmq_sink, args=(ports, batched))
    sink.start()
    mapper = spawn.Process(target=zmq_map, args=(ports, f"tcp://127.0.0.1:{ports.get()}", batched))
    mapper.start()
    source = spawn.Process(target=zmq_source, args=(f"tcp://127.0.0.1:{ports.get()}", count, batched))
    source.start()
    for process in (source, mapper, sink):
        process.join()


BYTES_HWM = 16
"""Large messages: a ZeroMQ queue of the default 1000 would hold a gigabyte per socket."""


def bytes_source(endpoint: str, count: int, size: int) -> None:
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.sndhwm = BYTES_HWM
    push.connect(endpoint)
    block = bytearray(size)
    for _ in range(count):
        buffers: list[pickle.PickleBuffer] = []
        header = pickle.dumps(block, protocol=5, buffer_callback=buffers.append)
        push.send_multipart([header, *(b.raw() for b in buffers)], copy=False)
    push.send(END)
    push.close(linger=-1)
    context.term()


def bytes_map(ports: multiprocessing.Queue, push_endpoint: str) -> None:
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.rcvhwm = BYTES_HWM
    ports.put(pull.bind_to_random_port("tcp://127.0.0.1"))
    push = context.socket(zmq.PUSH)
    push.sndhwm = BYTES_HWM
    push.connect(push_endpoint)
    while True:
        frames = pull.recv_multipart(copy=False)
        if frames[0].bytes == END:
            break
        block = pickle.loads(frames[0].buffer, buffers=[frame.buffer for frame in frames[1:]])
        buffers: list[pickle.PickleBuffer] = []
        header = pickle.dumps(block, protocol=5, buffer_callback=buffers.append)
        push.send_multipart([header, *(b.raw() for b in buffers)], copy=False)
    push.send(END)
    push.close(linger=-1)
    pull.close()
    context.term()


def bytes_sink(ports: multiprocessing.Queue) -> None:
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.rcvhwm = BYTES_HWM
    ports.put(pull.bind_to_random_port("tcp://127.0.0.1"))
    while True:
        frames = pull.recv_multipart(copy=False)
        if frames[0].bytes == END:
            break
        pickle.loads(frames[0].buffer, buffers=[frame.buffer for frame in frames[1:]])
    pull.close()
    context.term()


def run_zmq_bytes(count: int, size: int) -> None:
    spawn = multiprocessing.get_context("spawn")
    ports = spawn.Queue()
    sink = spawn.Process(target=bytes_sink, args=(ports,))
    sink.start()
    mapper = spawn.Process(target=bytes_map, args=(ports, f"tcp://127.0.0.1:{ports.get()}"))
    mapper.start()
    source = spawn.Process(target=bytes_source, args=(f"tcp://127.0.0.1:{ports.get()}", count, size))
    source.start()
    for process in (source, mapper, sink):
        process.join()


def latency_source(endpoint: str, count: int, rate: float) -> None:
    """Stamped items at ``rate`` per second, as the flowgraph latency benchmark's source makes them."""
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.connect(endpoint)
    interval = 1 / rate
    due = time.monotonic()
    for n in range(count):
        due += interval
        time.sleep(max(0.0, due - time.monotonic()))
        push.send(pickle.dumps([(n, time.monotonic())], protocol=5))
    push.send(END)
    push.close(linger=-1)
    context.term()


def latency_sink(ports: multiprocessing.Queue, figures: multiprocessing.Queue) -> None:
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    ports.put(pull.bind_to_random_port("tcp://127.0.0.1"))
    seconds = []
    while (message := pull.recv()) != END:
        seconds += [time.monotonic() - stamp for _, stamp in pickle.loads(message)]
    seconds.sort()
    figures.put({"p50_ms": 1000 * seconds[len(seconds) // 2], "p99_ms": 1000 * seconds[int(len(seconds) * 0.99)]})
    pull.close()
    context.term()


def latency_map(ports: multiprocessing.Queue, push_endpoint: str) -> None:
    """Passes each message on, decoded and encoded again (the flowgraph map returns its item)."""
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    ports.put(pull.bind_to_random_port("tcp://127.0.0.1"))
    push = context.socket(zmq.PUSH)
    push.connect(push_endpoint)
    while (message := pull.recv()) != END:
        push.send(pickle.dumps(pickle.loads(message), protocol=5))
    push.send(END)
    push.close(linger=-1)
    pull.close()
    context.term()


def run_zmq_latency(count: int, rate: float) -> None:
    """source -> map -> sink, each stamped item sent at once in a message of its own."""
    spawn = multiprocessing.get_context("spawn")
    ports, figures = spawn.Queue(), spawn.Queue()
    sink = spawn.Process(target=latency_sink, args=(ports, figures))
    sink.start()
    mapper = spawn.Process(target=latency_map, args=(ports, f"tcp://127.0.0.1:{ports.get()}"))
    mapper.start()
    source = spawn.Process(target=latency_source, args=(f"tcp://127.0.0.1:{ports.get()}", count, rate))
    source.start()
    print(json.dumps(figures.get()))
    for process in (source, mapper, sink):
        process.join()


def queue_source(out: multiprocessing.Queue, count: int) -> None:
    for n in range(count):
        out.put(item(n))
    out.put(None)


def queue_map(inp: multiprocessing.Queue, out: multiprocessing.Queue) -> None:
    while (one := inp.get()) is not None:
        one["score"] += 1
        out.put(one)
    out.put(None)


def queue_sink(inp: multiprocessing.Queue) -> None:
    while inp.get() is not None:
        pass


def run_queue(count: int) -> None:
    spawn = multiprocessing.get_context("spawn")
    first, second = spawn.Queue(maxsize=1000), spawn.Queue(maxsize=1000)
    processes = [spawn.Process(target=queue_source, args=(first, count)),
                 spawn.Process(target=queue_map, args=(first, second)),
                 spawn.Process(target=queue_sink, args=(second,))]
    for process in processes:
        process.start()
    for process in processes:
        process.join()


if __name__ == "__main__":
    kind, count = sys.argv[1], int(sys.argv[2])
    if kind == "zmq-batched":
        run_zmq(count, batched=True)
    elif kind == "zmq-items":
        run_zmq(count, batched=False)
    elif kind == "mp-queue":
        run_queue(count)
    elif kind == "zmq-bytes":
        run_zmq_bytes(count, int(sys.argv[3]))
    elif kind == "zmq-latency":
        run_zmq_latency(count, float(sys.argv[3]))
    else:
        raise SystemExit(f"unknown baseline {kind!r}; expected zmq-batched, zmq-items, mp-queue, zmq-bytes or "
                         f"zmq-latency")
