"""Load: 1 000 comms held open at once on one listener, 100 000 numbered and
checksummed messages on one comm and across 50, and a soak watching RSS and
open file descriptors. Nothing may be lost, reordered or corrupted."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import time
import zlib

import numpy as np
import psutil
import pytest

import distributed_comm as dc
from distributed_comm.protocol import to_serialize

from .conftest import echo

STRESS = bool(os.environ.get("DC_STRESS"))
FIGURES: dict[str, int] = {}


def ensure_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def payload(i: int) -> bytes:
    """A message body of varying size (0..~2 KiB, sometimes 70 KiB) derived from *i*."""
    size = 70_000 if i % 997 == 0 else (i * 7919) % 2048
    return (i.to_bytes(8, "little") * (size // 8 + 1))[:size]


async def test_thousand_concurrent_comms_on_one_listener():
    n = 1000
    ensure_fd_limit(2 * n + 256)
    open_now = 0
    peak = 0

    async def counting_echo(comm):
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        try:
            await echo(comm)
        finally:
            open_now -= 1

    async with dc.listen("tcp://127.0.0.1:0", counting_echo) as listener:
        started = time.monotonic()
        comms = []
        for _ in range(n // 200):  # connect in waves: no SYN flood on one backlog
            comms += await asyncio.gather(
                *(dc.connect(listener.contact_address, timeout=30) for _k in range(200))
            )
        assert len(comms) == n and not any(c.closed() for c in comms)
        for _ in range(100):
            if open_now == n:
                break
            await asyncio.sleep(0.05)
        assert open_now == n  # all held at once

        async def exchange(k, comm):
            for i in range(3):
                await comm.write({"k": k, "i": i, "x": payload(k * 3 + i)})
            return [await comm.read() for _ in range(3)]

        replies = await asyncio.wait_for(
            asyncio.gather(*(exchange(k, c) for k, c in enumerate(comms))), 60
        )
        for k, got in enumerate(replies):
            assert got == [{"k": k, "i": i, "x": payload(k * 3 + i)} for i in range(3)]
        await asyncio.gather(*(c.close() for c in comms))
        elapsed = time.monotonic() - started
    FIGURES["concurrent comms held"] = peak
    FIGURES["messages verified (1000 comms)"] = 3 * n * 2
    assert peak == n
    assert elapsed < 60


async def stream_and_verify(comms: list, servers: list, per_comm: int) -> int:
    """Each client comm writes *per_comm* numbered messages with a CRC32; each
    server end checks them arriving complete and in order. Returns how many."""

    async def send(comm, c):
        for i in range(per_comm):
            data = payload(i + c)
            await comm.write({"c": c, "i": i, "crc": zlib.crc32(data), "d": data})
            if i % 256 == 0:
                await asyncio.sleep(0)  # let readers run: the writer never waits otherwise

    async def check(comm, c):
        for i in range(per_comm):
            msg = await comm.read()
            assert (msg["c"], msg["i"]) == (c, i), f"comm {c}: expected {i}, got {msg['i']}"
            assert zlib.crc32(msg["d"]) == msg["crc"]
            assert msg["d"] == payload(i + c)
        return per_comm

    tasks = [send(comm, c) for c, comm in enumerate(comms)]
    tasks += [check(comm, c) for c, comm in enumerate(servers)]
    results = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return sum(r for r in results if r)


async def open_pairs(listener, accepted: asyncio.Queue, n: int) -> tuple[list, list]:
    clients, servers = [], []
    for _ in range(n):
        clients.append(await dc.connect(listener.contact_address))
        servers.append(await asyncio.wait_for(accepted.get(), 5))
    return clients, servers


@pytest.mark.parametrize("comms", [1, 50])
async def test_hundred_thousand_messages_complete_and_in_order(comms):
    total = 100_000
    accepted: asyncio.Queue = asyncio.Queue()
    async with dc.listen("tcp://127.0.0.1:0", accepted.put) as listener:
        clients, servers = await open_pairs(listener, accepted, comms)
        started = time.monotonic()
        verified = await stream_and_verify(clients, servers, total // comms)
        elapsed = time.monotonic() - started
        for c in clients:
            await c.close()
        for s in servers:
            with pytest.raises(dc.CommClosedError):  # nothing extra was left behind
                await asyncio.wait_for(s.read(), 5)
    assert verified == total
    FIGURES[f"messages verified ({comms} comm{'s' if comms > 1 else ''})"] = verified
    print(f"\n{total} messages over {comms} comm(s) in {elapsed:.1f} s")


async def soak(seconds: float) -> dict:
    """Open, use and close comms of every kind of traffic for *seconds*; return
    the RSS and fd figures sampled along the way."""
    process = psutil.Process()
    accepted: asyncio.Queue = asyncio.Queue()
    big = np.arange(2**20 // 8, dtype="f8")  # 1 MiB
    rounds = messages = 0

    async def one_round(listener, r):
        clients, servers = await open_pairs(listener, accepted, 8)
        sent = 0
        for k, (c, s) in enumerate(zip(clients, servers, strict=True)):
            for i in range(20):
                msg = {"r": r, "k": k, "i": i, "d": payload(r + k + i)}
                if i % 10 == 0:
                    msg["x"] = to_serialize(big + i)
                await c.write(msg)
                got = await s.read()
                assert got["i"] == i and got["d"] == msg["d"]
                if "x" in msg:
                    np.testing.assert_array_equal(got["x"], big + i)
                await s.write({"ack": i})
                assert await c.read() == {"ack": i}
                sent += 2
        for c in clients[::2]:
            await c.close()
        for c in clients[1::2]:
            c.abort()
        for s in servers:
            with pytest.raises(dc.CommClosedError):
                await asyncio.wait_for(s.read(), 5)
        return sent

    async with dc.listen("tcp://127.0.0.1:0", accepted.put) as listener:
        await one_round(listener, 10**6)  # warm up: caches, offload thread, allocator pools
        gc.collect()
        start_rss, start_fds = process.memory_info().rss, process.num_fds()
        samples = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            messages += await one_round(listener, rounds)
            rounds += 1
            if rounds % 5 == 0:
                gc.collect()
                samples.append((process.memory_info().rss, process.num_fds()))
        gc.collect()
        await asyncio.sleep(0.1)
        end_rss, end_fds = process.memory_info().rss, process.num_fds()
    return {
        "rounds": rounds,
        "messages": messages,
        "rss growth": end_rss - start_rss,
        "fd growth": end_fds - start_fds,
        "max fds": max((fds for _, fds in samples), default=end_fds),
        "start fds": start_fds,
    }


def check_soak(figures: dict) -> None:
    print(f"\nsoak: {figures}")
    assert figures["rounds"] > 3
    assert figures["fd growth"] <= 0, figures
    assert figures["max fds"] <= figures["start fds"] + 20, figures
    assert figures["rss growth"] < 64 * 2**20, figures
    FIGURES["soak messages verified"] = figures["messages"]


async def test_soak_bounded():
    check_soak(await soak(10))


@pytest.mark.slow
@pytest.mark.skipif(not STRESS, reason="several minutes: set DC_STRESS=1")
async def test_soak_long():
    check_soak(await soak(300))


def test_figures():
    """Not a check: prints the load figures (run with -s)."""
    print(f"\nload figures: {FIGURES}")
