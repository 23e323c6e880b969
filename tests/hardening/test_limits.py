"""Limits before allocation, on real sockets: a prelude declaring too much (or
nonsense) aborts that comm with a clear ``CommClosedError`` before anything near
the declared size is allocated, and the listener keeps serving everyone else."""

from __future__ import annotations

import asyncio
import logging
import struct
import tracemalloc

import pytest

import distributed_comm as dc
from distributed_comm import config

from .conftest import (
    assert_quiet,
    assert_serves,
    echo,
    handshake_bytes,
    hung_up,
    raw_message,
    read_message,
)

MiB = 2**20
LIMIT = 64 * MiB
MAX_FRAMES = 1000
#: What reading a refused prelude may allocate at most (Python + numpy, tracemalloc).
ALLOWED_PEAK = 4 * MiB

# name: (bytes a lying peer sends, what the error says). A head up to 128 KiB is
# read whole before it is parsed, so each lie sends all of its (small) head.
LIES = {
    "absurd frame count": (struct.pack("<3Q", 16, 2**40, 0), "1099511627776 frames"),
    "absurd count, large head": (struct.pack("<2Q", 2**20, 2**60), "frames; the limit"),
    "count just over max-frames": (raw_message(8 * 1002, [0] * 1001), "1001 frames"),
    "length 2**63": (raw_message(16, [2**63]), "max-message-size"),
    "length 2**63 in the head": (raw_message(16 + 2**63, [2**63]), "outside 8.."),
    "length 2**64-1": (raw_message(24, [2**64 - 1, 1]), "max-message-size"),
    "lengths summing to 2**64 (u64 wrap to 0)": (
        raw_message(24, [2**63, 2**63]),
        "18446744073709551616 bytes",
    ),
    "lengths summing to 2**64+8 (wrap to 8)": (
        raw_message(32, [2**64 - 8, 8, 8]),
        "max-message-size",
    ),
    "one frame over max-message-size": (raw_message(16, [LIMIT + 1]), "max-message-size"),
    "head smaller than its prelude": (struct.pack("<4Q", 16, 3, 1, 1), "cannot hold the prelude"),
    "head of 0 bytes": (struct.pack("<Q", 0), "outside 8.."),
    "head of 7 bytes": (struct.pack("<Q", 7) + b"\x01" * 7, "outside 8.."),
    "head of 2**64-1 bytes": (struct.pack("<Q", 2**64 - 1), "outside 8.."),
    "head over the limits": (struct.pack("<2Q", 8 * (MAX_FRAMES + 1) + LIMIT + 1, 1), "outside"),
    "head ends inside a frame": (raw_message(16 + 3, [2**20], b"abc"), "ends inside frame 0"),
}


@pytest.fixture(autouse=True)
def small_limits():
    with config.set(
        {"distributed.comm.max-message-size": LIMIT, "distributed.comm.max-frames": MAX_FRAMES}
    ):
        yield


def allocation_peak(coro_factory):
    """Run a coroutine under tracemalloc; return (its result or exception, peak bytes)."""

    async def run():
        tracemalloc.start()
        tracemalloc.reset_peak()
        try:
            return await coro_factory(), None
        except Exception as exc:
            return None, exc
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            run.peak = peak

    return run


@pytest.mark.parametrize("lie", list(LIES))
async def test_listener_refuses_a_lying_prelude_after_the_handshake(lie, caplog):
    data, reason = LIES[lie]
    caplog.set_level(logging.INFO)
    outcome: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handler(comm):
        if outcome.done():
            return await echo(comm)  # a later, honest client
        tracemalloc.start()
        try:
            await comm.read()
        except Exception as exc:
            outcome.set_result((exc, comm.closed(), tracemalloc.get_traced_memory()[1]))
        else:
            outcome.set_result((None, comm.closed(), 0))
        finally:
            tracemalloc.stop()

    async with dc.listen("tcp://127.0.0.1:0", handler) as listener:
        host, port = dc.get_address_host_port(listener.contact_address)
        reader, writer = await asyncio.open_connection(host, port)
        await read_message(reader)
        writer.write(handshake_bytes() + data)
        exc, closed, peak = await asyncio.wait_for(outcome, 5)
        assert isinstance(exc, dc.CommClosedError), exc
        assert any(part in str(exc) for part in reason.split("|")), str(exc)
        assert "127.0.0.1" in str(exc)  # names the comm
        assert closed
        assert peak < ALLOWED_PEAK, f"allocated {peak} bytes for a refused message"
        await hung_up(reader)  # the comm really was closed
        writer.close()
        await assert_serves(listener)
    assert_quiet(caplog, dropped=0)


@pytest.mark.parametrize("lie", list(LIES))
async def test_listener_drops_a_lying_prelude_in_place_of_a_handshake(lie, caplog):
    data, reason = LIES[lie]
    caplog.set_level(logging.INFO)
    async with dc.listen("tcp://127.0.0.1:0", echo) as listener:
        host, port = dc.get_address_host_port(listener.contact_address)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(data)
        await hung_up(reader)
        writer.close()
        await assert_serves(listener)
    assert any(part in caplog.text for part in reason.split("|")), caplog.text
    assert_quiet(caplog, dropped=1)


async def raw_server(send: bytes, handshake: bool = True):
    """A raw-socket server: answers the handshake (or not), then sends *send*."""

    async def serve(reader, writer):
        try:
            await read_message(reader)
            if handshake:
                writer.write(handshake_bytes())
            writer.write(send)
            await writer.drain()
            await hung_up(reader, 10)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("lie", list(LIES))
async def test_connector_refuses_a_lying_prelude_from_the_server(lie):
    data, reason = LIES[lie]
    server, address = await raw_server(data)
    async with server:
        comm = await dc.connect(address, timeout=5)
        tracemalloc.start()
        try:
            with pytest.raises(dc.CommClosedError) as info:
                await asyncio.wait_for(comm.read(), 5)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert any(part in str(info.value) for part in reason.split("|")), str(info.value)
        assert comm.closed()
        assert peak < ALLOWED_PEAK


@pytest.mark.parametrize("lie", ["absurd frame count", "length 2**63", "head of 7 bytes"])
async def test_connect_fails_cleanly_on_a_lying_handshake(lie):
    data, reason = LIES[lie]
    server, address = await raw_server(data, handshake=False)
    async with server:
        with pytest.raises(dc.CommClosedError, match=reason.split("|")[-1].replace("*", r"\*")):
            await dc.connect(address, timeout=5)


async def test_declared_size_under_the_limit_but_never_sent_costs_no_rss():
    """Within the limits a reader allocates what is declared (uninitialised), but a
    peer that then sends nothing makes it touch no memory before the comm dies."""
    import psutil

    declared = LIMIT - 64
    server, address = await raw_server(raw_message(16, [declared]) + b"only this")
    async with server:
        comm = await dc.connect(address, timeout=5)
        before = psutil.Process().memory_info().rss
        with pytest.raises(dc.CommClosedError):
            await asyncio.wait_for(comm.read(), 15)
        grown = psutil.Process().memory_info().rss - before
    assert grown < declared // 4, f"RSS grew by {grown} bytes"
