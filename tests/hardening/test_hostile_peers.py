"""Hostile and broken peers on real sockets: each one costs only its own comm
(``CommClosedError``, or a clear decode error with the comm left usable), the
listener keeps serving, and the log gets at most one short line per dropped peer."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import msgpack
import pytest

import distributed_comm as dc
from distributed_comm import config, protocol
from distributed_comm.protocol import LOADS_ERRORS

from .conftest import (
    assert_quiet,
    assert_serves,
    echo,
    handshake_bytes,
    hung_up,
    raw_message,
    read_message,
    wire,
)


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO)


async def raw_client(listener):
    """A plain socket to *listener*, past the listener's half of the handshake."""
    host, port = dc.get_address_host_port(listener.contact_address)
    reader, writer = await asyncio.open_connection(host, port)
    await read_message(reader)
    return reader, writer


GARBAGE = {
    "http request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "random bytes": random.Random(1).randbytes(4096),
    "zeros": bytes(64),
    "ones": b"\xff" * 64,
    "tls client hello": bytes.fromhex("160301020001") + bytes(512),
}


@pytest.mark.parametrize("kind", list(GARBAGE))
async def test_garbage_instead_of_a_handshake(kind, caplog):
    async with dc.listen("tcp://127.0.0.1:0", echo) as listener:
        for _ in range(3):
            reader, writer = await raw_client(listener)
            writer.write(GARBAGE[kind])
            await hung_up(reader)
            writer.close()
        await assert_serves(listener)
        assert not listener._handshaking
    assert "dropped connection" in caplog.text
    assert_quiet(caplog, dropped=3)


# What follows a valid handshake; "closed": the comm must end in CommClosedError,
# "decode": read() raises a decode error and the comm goes on with the next message.
AFTER_HANDSHAKE = {
    "random bytes": (random.Random(2).randbytes(100_000), "closed"),
    "truncated head, then close": (raw_message(16 + 1000, [1000], b"x" * 10), "closed"),
    "closing mid large frame": (raw_message(16, [5 * 2**20]) + b"y" * 2**20, "closed"),
    "closing mid prelude": (raw_message(8 * 4, [1, 2, 3])[:20], "closed"),
    "malformed msgpack": (wire([b"\xc1\x00\x01"]), "decode"),
    "msgpack with trailing bytes": (wire([msgpack.packb({"a": 1}) + b"\x00"]), "decode"),
    "truncated msgpack": (wire([msgpack.packb({"a": "long string" * 9})[:-5]]), "decode"),
    "__Serialized__ past the frames": (
        wire([msgpack.packb({"x": {"__Serialized__": 7}}), b""]),
        "decode",
    ),
    "__Pickled__ past the frames": (
        wire([msgpack.packb({"x": {"__Pickled__": 2**40}}), b""]),
        "decode",
    ),
    "sub-header frame count lies": (
        wire(
            [
                msgpack.packb({"x": {"__Serialized__": 1}}),
                msgpack.packb({"serializer": "pickle", "num-sub-frames": 5, "writeable": ()}),
                b"only one",
            ]
        ),
        "decode",
    ),
    "sub-header frame count negative": (
        wire([msgpack.packb({"x": {"__Serialized__": 1}}), msgpack.packb({"num-sub-frames": -3})]),
        "decode",
    ),
    "unknown serializer": (
        wire(protocol.dumps({"x": protocol.Serialized({"serializer": "nope"}, [b""])})),
        "decode",
    ),
    "unknown compression": (
        wire(
            protocol.dumps(
                {
                    "x": protocol.Serialized(
                        {"serializer": "pickle", "compression": ("brotli",)}, [b""]
                    )
                }
            )
        ),
        "decode",
    ),
}


@pytest.mark.parametrize("kind", list(AFTER_HANDSHAKE))
async def test_broken_messages_after_the_handshake(kind, caplog):
    data, expect = AFTER_HANDSHAKE[kind]
    outcomes: asyncio.Queue = asyncio.Queue()

    async def handler(comm):
        while True:
            try:
                msg = await comm.read()
            except dc.CommClosedError as exc:
                return await outcomes.put(("closed", exc, comm.closed()))
            except LOADS_ERRORS as exc:
                await outcomes.put(("decode", exc, comm.closed()))
            else:
                if msg == {"op": "still serving"}:
                    await comm.write(msg)  # assert_serves' honest client
                else:
                    await outcomes.put(("message", msg, comm.closed()))

    async with dc.listen("tcp://127.0.0.1:0", handler) as listener:
        reader, writer = await raw_client(listener)
        writer.write(handshake_bytes() + data)
        if expect == "closed":
            writer.close()  # a broken stream ends here
        else:
            writer.write(wire(protocol.dumps({"op": "next"})))
        started = time.monotonic()
        what, value, closed = await asyncio.wait_for(outcomes.get(), 10)
        assert time.monotonic() - started < 5
        assert what == expect, value
        if expect == "closed":
            assert closed and "127.0.0.1" in str(value)
        else:
            assert not closed
            assert str(value)  # a message saying what is wrong
            assert await asyncio.wait_for(outcomes.get(), 5) == ("message", {"op": "next"}, False)
            writer.close()
        await assert_serves(listener)
    assert_quiet(caplog, dropped=0)


async def test_silent_peer_is_dropped_after_the_handshake_timeout(caplog):
    with config.set({"distributed.comm.timeouts.handshake": "300ms"}):
        async with dc.listen("tcp://127.0.0.1:0", echo) as listener:
            started = time.monotonic()
            silent = [await raw_client(listener) for _ in range(5)]
            for reader, writer in silent:
                await hung_up(reader, timeout=5)
                writer.close()
            assert time.monotonic() - started < 3
            assert not listener._handshaking
            await assert_serves(listener)
    assert caplog.text.count("timed out after 0.3 s") == 5
    assert_quiet(caplog, dropped=5)


async def test_silent_server_bounds_connect():
    async def mute(reader, writer):
        await asyncio.sleep(10)

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    address = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        with config.set({"distributed.comm.timeouts.handshake": "200ms"}):
            started = time.monotonic()
            with pytest.raises(dc.CommClosedError, match="handshake.*timed out"):
                await dc.connect(address, timeout=5)
            assert time.monotonic() - started < 2


async def test_plain_tcp_client_on_a_tls_listener(tls_contexts, caplog):
    server_ctx, client_ctx = tls_contexts
    async with dc.listen("tls://127.0.0.1:0", echo, ssl_context=server_ctx) as listener:
        plain = "tcp://" + listener.contact_address.split("://")[1]
        with config.set({"distributed.comm.timeouts.handshake": "2s"}):
            started = time.monotonic()
            with pytest.raises(dc.CommClosedError):
                await dc.connect(plain, timeout=5)
            assert time.monotonic() - started < 4
        await assert_serves(listener, ssl_context=client_ctx)
    assert_quiet(caplog, dropped=1)


async def test_tls_client_on_a_plain_listener(tls_contexts, caplog):
    _, client_ctx = tls_contexts
    async with dc.listen("tcp://127.0.0.1:0", echo) as listener:
        tls = "tls://" + listener.contact_address.split("://")[1]
        started = time.monotonic()
        with pytest.raises(dc.CommClosedError):
            await dc.connect(tls, timeout=5, ssl_context=client_ctx)
        assert time.monotonic() - started < 5
        await assert_serves(listener)
    assert_quiet(caplog, dropped=2)  # one line from each end: both are in this process


async def test_many_hostile_peers_at_once_do_not_starve_an_honest_one(caplog):
    """50 peers sending garbage, 50 silent, 50 closing mid-frame, while honest
    clients keep getting answers."""
    rnd = random.Random(3)
    with config.set({"distributed.comm.timeouts.handshake": "1s"}):
        async with dc.listen("tcp://127.0.0.1:0", echo) as listener:

            async def hostile(i):
                reader, writer = await raw_client(listener)
                if i % 3 == 0:
                    writer.write(rnd.randbytes(300))
                elif i % 3 == 1:
                    writer.write(handshake_bytes() + raw_message(16, [2**20]) + b"z" * 100)
                    writer.close()
                    return
                await hung_up(reader)
                writer.close()

            async def honest():
                for _ in range(10):
                    await assert_serves(listener)

            await asyncio.wait_for(asyncio.gather(*(hostile(i) for i in range(150)), honest()), 20)
            assert not listener._handshaking
    assert_quiet(caplog, dropped=100)


@pytest.mark.parametrize("tornado_level", [logging.NOTSET, logging.CRITICAL])
async def test_failed_tls_handshake_logs_one_line(tls_contexts, caplog, tornado_level):
    """Regression: Tornado's warning and ours both named the same peer; and with
    Tornado silenced (as dask configures it) ours must still say something."""
    tornado_log = logging.getLogger("tornado.general")
    previous = tornado_log.level
    tornado_log.setLevel(tornado_level)
    try:
        async with dc.listen("tls://127.0.0.1:0", echo, ssl_context=tls_contexts[0]) as listener:
            host, port = dc.get_address_host_port(listener.contact_address)
            reader, writer = await asyncio.open_connection(host, port)
            peer_port = writer.get_extra_info("sockname")[1]
            writer.write(GARBAGE["http request"])
            await hung_up(reader)
            writer.close()
    finally:
        tornado_log.setLevel(previous)
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1, caplog.text
    assert "HTTP_REQUEST" in lines[0].getMessage() and str(peer_port) in lines[0].getMessage()
