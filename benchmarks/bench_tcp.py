"""tcp:// side by side: distributed_comm vs distributed.comm vs raw blocking sockets.

Each implementation's server runs in its own process; the client runs here.
Repetitions are interleaved (ours, theirs, raw, ours, ...) so machine noise
hits all three alike, and medians are reported.

- round trips/s: ``{"op": "ping", "i": i}`` written and echoed back, one at a time.
- throughput: N messages carrying one ``uint8`` numpy array of the given size
  (``to_serialize``d, so neither comm copies it), written back to back; the
  server answers once it has read all N. Raw sockets send an 8-byte length and
  the bytes, and receive into a fresh ``numpy.empty`` per message.

    python benchmarks/bench_tcp.py [--repeat 5] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import struct
import time

import numpy

SIZES = {"1 KiB": 2**10, "64 KiB": 2**16, "1 MiB": 2**20, "16 MiB": 2**24, "128 MiB": 2**27}
IMPLEMENTATIONS = ("distributed_comm", "distributed", "raw")
LENGTH = struct.Struct("<Q")


def _comm_module(name: str):
    if name == "distributed_comm":
        import distributed_comm as comm
        from distributed_comm.protocol import to_serialize
    else:
        import distributed.comm as comm
        from distributed.protocol import to_serialize
    return comm, to_serialize


# ---------------------------------------------------------------- servers ---


async def _comm_server(name: str, ready) -> None:
    comm_module, _ = _comm_module(name)

    async def handle(comm) -> None:
        try:
            while True:
                msg = await comm.read()
                if msg["op"] == "ping":
                    await comm.write(msg)
                elif msg["op"] == "data" and msg["last"]:
                    await comm.write({"op": "done"})
        except comm_module.CommClosedError:
            pass

    listener = await comm_module.listen("tcp://127.0.0.1:0", handle)
    ready.send(listener.contact_address)
    await asyncio.Event().wait()


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    while view.nbytes:
        got = sock.recv_into(view)
        if not got:
            raise ConnectionError("peer closed")
        view = view[got:]


def _raw_server(ready) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    host, port = server.getsockname()
    ready.send(f"raw://{host}:{port}")
    while True:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        header = bytearray(LENGTH.size * 2)
        try:
            while True:
                _recv_exact(conn, memoryview(header))
                size, last = struct.unpack("<QQ", header)
                _recv_exact(conn, memoryview(numpy.empty(size, "u1")))
                if last:
                    conn.sendall(b"done")
        except ConnectionError:
            conn.close()


def _serve(name: str, ready) -> None:
    if name == "raw":
        _raw_server(ready)
    else:
        asyncio.run(_comm_server(name, ready))


def start_server(name: str) -> tuple[multiprocessing.Process, str]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(name, child), daemon=True)
    process.start()
    return process, parent.recv()


# ---------------------------------------------------------------- clients ---


async def comm_round_trips(comm, seconds: float) -> float:
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for i in range(100):
            await comm.write({"op": "ping", "i": i})
            await comm.read()
        count += 100
        now = time.perf_counter()
        if now > deadline:
            return count / (now - start)


async def comm_throughput(comm, to_serialize, payload: numpy.ndarray, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        await comm.write({"op": "data", "last": i == count - 1, "x": to_serialize(payload)})
    await comm.read()
    return payload.nbytes * count / (time.perf_counter() - start)


def raw_throughput(sock: socket.socket, payload: numpy.ndarray, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        sock.sendall(struct.pack("<QQ", payload.nbytes, i == count - 1))
        sock.sendall(payload)
    _recv_exact(sock, memoryview(bytearray(4)))
    return payload.nbytes * count / (time.perf_counter() - start)


def message_count(size: int, quick: bool) -> int:
    budget = 2**27 if quick else 2**29
    return max(4, min(5000 if quick else 20000, budget // size))


async def run(repeat: int, quick: bool) -> dict:
    servers = {name: start_server(name) for name in IMPLEMENTATIONS}
    results: dict = {name: {"round trips/s": [], **{s: [] for s in SIZES}} for name in servers}
    comms = {}
    for name in ("distributed_comm", "distributed"):
        comm_module, to_serialize = _comm_module(name)
        comms[name] = (await comm_module.connect(servers[name][1]), to_serialize)
    host, port = servers["raw"][1].split("://")[1].rsplit(":", 1)
    raw = socket.create_connection((host, int(port)))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payloads = {label: numpy.random.randint(0, 255, size, "u1") for label, size in SIZES.items()}

    for _ in range(repeat):
        for name, (comm, _) in comms.items():
            results[name]["round trips/s"].append(
                await comm_round_trips(comm, 0.5 if quick else 2.0)
            )
        for label, payload in payloads.items():
            count = message_count(payload.nbytes, quick)
            for name in IMPLEMENTATIONS:
                if name == "raw":
                    value = raw_throughput(raw, payload, count)
                else:
                    comm, to_serialize = comms[name]
                    value = await comm_throughput(comm, to_serialize, payload, count)
                results[name][label].append(value)

    for comm, _ in comms.values():
        await comm.close()
    raw.close()
    for process, _ in servers.values():
        process.terminate()
    return {
        name: {key: statistics.median(values) for key, values in row.items() if values}
        for name, row in results.items()
    }


def print_table(medians: dict) -> None:
    ours, theirs, raw = (medians[name] for name in IMPLEMENTATIONS)
    print(f"{'':>16} {'distributed_comm':>17} {'distributed':>12} {'raw socket':>11} "
          f"{'ours/dist':>10} {'ours/raw':>9}")  # fmt: skip
    key = "round trips/s"
    print(f"{key:>16} {ours[key]:>17,.0f} {theirs[key]:>12,.0f} {'':>11} "
          f"{ours[key] / theirs[key]:>9.2f}x")  # fmt: skip
    for label in SIZES:
        o, t, r = ours[label] / 2**20, theirs[label] / 2**20, raw[label] / 2**20
        print(f"{label + ' MiB/s':>16} {o:>17,.0f} {t:>12,.0f} {r:>11,.0f} "
              f"{o / t:>9.2f}x {o / r:>8.0%}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke test)")
    parser.add_argument("--json", help="also write the medians to this file")
    args = parser.parse_args()
    medians = asyncio.run(run(args.repeat, args.quick))
    print_table(medians)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(medians, file, indent=2)


if __name__ == "__main__":
    main()
