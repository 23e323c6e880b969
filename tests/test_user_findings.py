"""Regressions found by using the package as a newcomer would, next to stock distributed."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time

import pytest

import distributed_comm as dc
from distributed_comm import config
from distributed_comm.ws import WS, WSS

trustme = pytest.importorskip("trustme")


async def test_connect_timeout_also_bounds_the_handshake():
    """A peer that accepts and stays silent: ``connect(timeout=...)`` is the whole
    budget, not ``timeouts.handshake`` (30 s) on top of it."""

    async def mute(reader, writer):
        await asyncio.sleep(10)

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    address = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        assert config.parse_timedelta(config.get("distributed.comm.timeouts.handshake")) >= 10
        started = time.monotonic()
        with pytest.raises(dc.CommClosedError, match="handshake.*timed out"):
            await asyncio.wait_for(dc.connect(address, timeout=0.5), 8)
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("timeout", [-1, -0.001, float("nan")])
async def test_connect_refuses_a_negative_or_nan_timeout(timeout):
    with pytest.raises(ValueError, match="connect timeout .* got"):
        await dc.connect("tcp://127.0.0.1:1", timeout=timeout)


def _raising_handlers():
    async def async_handler(comm):
        raise RuntimeError("boom in async handler")

    def sync_handler(comm):
        raise RuntimeError("boom in sync handler")

    return [async_handler, sync_handler]


@pytest.mark.parametrize("handler", _raising_handlers(), ids=["async", "sync"])
@pytest.mark.parametrize(
    "address", ["tcp://127.0.0.1:0", "inproc://", "unix://", "ws://127.0.0.1:0"]
)
async def test_a_handler_that_raises_is_logged_and_its_comm_closed(address, handler, caplog):
    """The peer must learn at once (CommClosedError), not hang until a GC cycle."""
    with caplog.at_level(logging.ERROR, logger="distributed_comm"):
        async with dc.listen(address, handler) as listener:
            comm = await dc.connect(listener.contact_address)
            with pytest.raises(dc.CommClosedError):
                await asyncio.wait_for(comm.read(), 5)
            await comm.close()
    failures = [r for r in caplog.records if r.name.startswith("distributed_comm")]
    assert len(failures) == 1
    assert "boom in" in failures[0].exc_text
    assert "closing the comm" in failures[0].getMessage()


async def test_wss_comms_are_their_own_class_as_in_distributed(tls_contexts):
    import distributed.comm.ws as dws

    server_ctx, client_ctx = tls_contexts
    accepted: asyncio.Queue = asyncio.Queue()
    async with dc.listen("wss://127.0.0.1:0", accepted.put, ssl_context=server_ctx) as listener:
        client = await dc.connect(listener.contact_address, ssl_context=client_ctx)
        server = await asyncio.wait_for(accepted.get(), 5)
        for comm in (client, server):
            assert type(comm) is WSS and isinstance(comm, WS)
            assert repr(comm).startswith("<WSS ")
        assert type(client).__name__ == dws.WSS.__name__
        await client.close()
    async with dc.listen("ws://127.0.0.1:0", accepted.put) as listener:
        client = await dc.connect(listener.contact_address)
        assert type(client) is WS
        await client.close()


async def test_a_tcp_port_in_use_names_the_address():
    async with dc.listen("tcp://127.0.0.1:0", lambda comm: None) as listener:
        taken = listener.listen_address
        with pytest.raises(OSError) as info:
            await dc.listen(taken, lambda comm: None).start()
    assert info.value.errno == errno.EADDRINUSE
    assert taken in str(info.value)


async def test_a_unix_socket_in_a_missing_directory_names_the_path(tmp_path):
    path = os.path.join(tmp_path, "missing", "comm.sock")
    with pytest.raises(FileNotFoundError, match="missing/comm.sock"):
        await dc.listen(f"unix://{path}", lambda comm: None).start()
