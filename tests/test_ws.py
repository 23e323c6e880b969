"""ws:// and wss:// specifics: the exact websocket messages, interop with a
stock distributed peer both ways, TLS details and limits on what a peer sends.

What every comm does (echo, close, handshake...) is covered for ws and wss by
tests/test_comm_behaviour.py.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

import distributed.comm as dist_comm
import distributed.protocol as dist_protocol
import numpy as np
import pytest
from tornado import netutil, web
from tornado.httpserver import HTTPServer
from tornado.websocket import WebSocketHandler, websocket_connect

import distributed_comm as dc
from distributed_comm import config, frames
from distributed_comm import protocol as our_protocol

trustme = pytest.importorskip("trustme")

SHARD = 8 * 2**20  # distributed.comm.websockets.shard


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def contexts(ca):
    """(server, client) contexts for a certificate valid for 127.0.0.1 and localhost."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    return server, client


def args(scheme: str, contexts, side: str) -> dict:
    if scheme == "ws":
        return {}
    return {"ssl_context": contexts[0] if side == "server" else contexts[1]}


def loopback(listener) -> str:
    """The listener's address on 127.0.0.1 (distributed's ws listener binds every
    interface and advertises the machine's IP; tests stay on loopback)."""
    scheme = listener.listen_address.split("://")[0]
    return f"{scheme}://127.0.0.1:{listener.get_host_port()[1]}"


def messages(to_serialize) -> list:
    """Messages covering the frame layouts: plain msgpack, large inline bytes,
    a numpy array split into shards, bytes split into shards."""
    array = np.arange(SHARD // 8 + 1000, dtype="f8").reshape(-1, 2)  # just over one shard
    return [
        {"op": "ping", "keys": ("x", "y"), "n": 10**12},
        b"\x01" * 3_000_000,
        {"op": "data", "x": to_serialize(array)},
        {"blob": to_serialize(b"\x02" * (2 * SHARD + 5))},
    ]


def check_received(got, sent) -> None:
    if isinstance(sent, dict):
        assert got.keys() == sent.keys()
        for key, value in sent.items():
            value = getattr(value, "data", value)  # unwrap Serialize
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(got[key], value)
                assert got[key].dtype == value.dtype and got[key].shape == value.shape
                assert got[key].flags.writeable
            else:
                assert got[key] == value
    else:
        assert got == sent


# ---------------------------------------------------------------------------
# The exact websocket messages, against distributed as the oracle
# ---------------------------------------------------------------------------


class Recorder(WebSocketHandler):
    """A bare websocket server: answers the comm handshake, records every message."""

    def initialize(self, received: asyncio.Queue, handshake: list) -> None:
        self.received = received
        self.handshake = handshake

    def open(self) -> None:
        for message in [frames.U64.pack(len(self.handshake)), *self.handshake]:
            self.write_message(message, binary=True)

    def on_message(self, message) -> None:
        self.received.put_nowait(message)


async def read_comm_message(next_message) -> list:
    """The websocket messages of one comm message: the count, then the frames."""
    count = await asyncio.wait_for(next_message(), 10)
    (n,) = frames.U64.unpack(count)
    return [count, *[await asyncio.wait_for(next_message(), 10) for _ in range(n)]]


def handshake_frames() -> list:
    """A same-host peer's handshake, as distributed packs it."""
    info = {"compression": None, "python": tuple(sys.version_info)[:3], "pickle-protocol": 5}
    return list(dist_protocol.dumps(info))


async def client_bytes(comm_module, protocol_module) -> list[list]:
    """What a client of *comm_module* sends: its handshake, then :func:`messages`."""
    received: asyncio.Queue = asyncio.Queue()
    recorder_args = {"received": received, "handshake": handshake_frames()}
    server = HTTPServer(web.Application([(r"/", Recorder, recorder_args)]))
    [sock] = netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets([sock])
    try:
        comm = await comm_module.connect(f"ws://127.0.0.1:{sock.getsockname()[1]}")
        sent = [await read_comm_message(received.get)]  # the handshake
        for message in messages(protocol_module.to_serialize):
            await comm.write(message)
            sent.append(await read_comm_message(received.get))
        await comm.close()
    finally:
        server.stop()
    return sent


async def server_bytes(comm_module, protocol_module) -> list[list]:
    """What a listener of *comm_module* sends to a client: handshake, then :func:`messages`."""

    async def handler(comm):
        for message in messages(protocol_module.to_serialize):
            await comm.write(message)

    listener = await comm_module.listen("ws://127.0.0.1:0", handler)
    try:
        conn = await websocket_connect(f"{loopback(listener)}/")
        for message in [frames.U64.pack(len(handshake_frames())), *handshake_frames()]:
            await conn.write_message(message, binary=True)
        sent = [await read_comm_message(conn.read_message) for _ in range(5)]
        conn.close()
    finally:
        listener.stop()
    return sent


@pytest.mark.parametrize("side", ["client", "server"])
async def test_websocket_messages_are_byte_identical_to_distributed(side):
    record = client_bytes if side == "client" else server_bytes
    ours = await record(dc, our_protocol)
    theirs = await record(dist_comm, dist_protocol)
    assert len(ours) == len(theirs) == 5
    for our_message, their_message in zip(ours, theirs, strict=True):
        assert our_message == their_message
    # and the layout is the documented one: a count, then one message per
    # frame, none larger than a shard unless it cannot be split
    data_message = ours[3]
    assert frames.U64.unpack(data_message[0])[0] == len(data_message) - 1
    assert [len(m) for m in data_message[3:]] == [SHARD, 1000 * 8]
    assert all(type(m) is bytes for m in data_message)


# ---------------------------------------------------------------------------
# Interop with stock distributed comms, both directions, ws and wss
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_our_client_with_distributed_listener(scheme, contexts):
    async def rewrap(comm):
        """Echo with distributed's own Serialize (checks it decoded our frames)."""
        try:
            while True:
                msg = await comm.read()
                if isinstance(msg, dict):
                    msg = {
                        k: dist_protocol.to_serialize(v)
                        if isinstance(v, (np.ndarray, bytes))
                        else v
                        for k, v in msg.items()
                    }
                await comm.write(msg)
        except dist_comm.CommClosedError:
            pass

    listener = await dist_comm.listen(
        f"{scheme}://127.0.0.1:0", rewrap, **args(scheme, contexts, "server")
    )
    try:
        comm = await dc.connect(loopback(listener), **args(scheme, contexts, "client"))
        assert comm.remote_info["pickle-protocol"] == 5
        for message in messages(our_protocol.to_serialize):
            await comm.write(message)
            check_received(await asyncio.wait_for(comm.read(), 30), message)
        if scheme == "wss":
            assert comm.extra_info["peercert"]["subjectAltName"][0] == ("DNS", "localhost") or (
                ("IP Address", "127.0.0.1") in comm.extra_info["peercert"]["subjectAltName"]
            )
        await comm.close()
    finally:
        listener.stop()


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_distributed_client_with_our_listener(scheme, contexts):
    accepted: asyncio.Queue = asyncio.Queue()
    listener = await dc.listen(
        f"{scheme}://127.0.0.1:0", accepted.put, **args(scheme, contexts, "server")
    )
    try:
        theirs = await dist_comm.connect(
            listener.contact_address, **args(scheme, contexts, "client")
        )
        ours = await asyncio.wait_for(accepted.get(), 5)
        assert ours.remote_info["python"] == ours.local_info["python"]
        for message in messages(dist_protocol.to_serialize):
            await theirs.write(message)
            check_received(await asyncio.wait_for(ours.read(), 30), message)
        for message in messages(our_protocol.to_serialize):
            await ours.write(message)
            check_received(await asyncio.wait_for(theirs.read(), 30), message)
        await theirs.close()
        with pytest.raises(dc.CommClosedError):
            await asyncio.wait_for(ours.read(), 5)
    finally:
        listener.stop()


# ---------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------


@pytest.fixture
async def wss_pair(contexts):
    accepted: asyncio.Queue = asyncio.Queue()
    async with dc.listen("wss://127.0.0.1:0", accepted.put, ssl_context=contexts[0]) as listener:
        client = await dc.connect(listener.contact_address, ssl_context=contexts[1])
        yield client, await asyncio.wait_for(accepted.get(), 5)


async def test_wss_extra_info_has_the_peer_certificate(wss_pair):
    client, server = wss_pair
    assert ("IP Address", "127.0.0.1") in client.extra_info["peercert"]["subjectAltName"]
    assert len(client.extra_info["cipher"]) == 3
    assert not server.extra_info["peercert"]  # the client showed no certificate
    assert server.extra_info["cipher"] == client.extra_info["cipher"]


async def test_ws_has_no_tls_info():
    async with dc.listen("ws://127.0.0.1:0", lambda comm: None) as listener:
        comm = await dc.connect(listener.contact_address)
        assert comm.extra_info == {}
        await comm.close()


async def test_untrusted_certificate_is_fatal_and_not_retried(contexts):
    stranger = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    trustme.CA().configure_trust(stranger)
    async with dc.listen("wss://127.0.0.1:0", lambda c: None, ssl_context=contexts[0]) as lst:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(dc.FatalCommClosedError, match="not trusted"):
            await dc.connect(lst.contact_address, timeout=20, ssl_context=stranger)
        assert loop.time() - start < 5


async def test_server_hostname_selects_the_certificate_name(ca):
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("scheduler.dask.example").configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    async with dc.listen("wss://127.0.0.1:0", lambda c: None, ssl_context=server) as listener:
        with pytest.raises(dc.FatalCommClosedError):
            await dc.connect(listener.contact_address, ssl_context=client)
        comm = await dc.connect(
            listener.contact_address,
            ssl_context=client,
            server_hostname="scheduler.dask.example",
        )
        assert comm.peer_address == listener.contact_address  # still named by address
        assert comm.extra_info["peercert"]["subjectAltName"] == (("DNS", "scheduler.dask.example"),)
        await comm.close()


async def test_wss_without_context_and_required_encryption_are_clear_errors(contexts):
    with pytest.raises(TypeError, match="ssl_context"):
        dc.listen("wss://127.0.0.1:0", lambda c: None)
    with pytest.raises(TypeError, match="ssl_context"):
        await dc.connect("wss://127.0.0.1:1", timeout=1)
    with pytest.raises(RuntimeError, match="encryption required"):
        await dc.connect("ws://127.0.0.1:1", timeout=1, require_encryption=True)
    with pytest.raises(RuntimeError, match="encryption required"):
        dc.listen("ws://127.0.0.1:0", lambda c: None, require_encryption=True)


# ---------------------------------------------------------------------------
# A misbehaving peer: CommClosedError, never a hang
# ---------------------------------------------------------------------------


@pytest.fixture
async def ws_pair():
    """(client, server) where the client was made under the limits set by the test."""
    accepted: asyncio.Queue = asyncio.Queue()
    async with dc.listen("ws://127.0.0.1:0", accepted.put) as listener:

        async def connect():
            client = await dc.connect(listener.contact_address)
            return client, await asyncio.wait_for(accepted.get(), 5)

        yield connect


async def test_text_message_closes_the_comm(ws_pair):
    client, server = await ws_pair()
    await server.write("before")
    server.sock.write_message("not binary")
    assert await client.read() == "before"
    with pytest.raises(dc.CommClosedError, match="text websocket message"):
        await asyncio.wait_for(client.read(), 5)
    assert client.closed()
    with pytest.raises(dc.CommClosedError):
        await asyncio.wait_for(server.read(), 5)


async def test_bad_frame_count_closes_the_comm(ws_pair):
    client, server = await ws_pair()
    server.sock.write_message(b"\x01\x02\x03", binary=True)
    with pytest.raises(dc.CommClosedError, match="8-byte frame count"):
        await asyncio.wait_for(client.read(), 5)
    with pytest.raises(dc.CommClosedError):  # and stays closed
        await client.read()


async def test_too_many_frames_is_refused_before_reading_them(ws_pair):
    with config.set({"distributed.comm.max-frames": 10}):
        client, server = await ws_pair()
    server.sock.write_message(frames.U64.pack(11), binary=True)
    with pytest.raises(dc.CommClosedError, match="11 frames; the limit is 10"):
        await asyncio.wait_for(client.read(), 5)


async def test_message_over_max_message_size_is_refused(ws_pair):
    with config.set({"distributed.comm.max-message-size": "100kB"}):
        client, server = await ws_pair()
    # every websocket message is under the limit, together they are over it
    small = np.ones(60_000, "u1")
    await server.write(
        {"a": our_protocol.to_serialize(small), "b": our_protocol.to_serialize(small)}
    )
    with pytest.raises(dc.CommClosedError, match="max-message-size"):
        await asyncio.wait_for(client.read(), 5)
    # one websocket message over the limit: tornado drops the connection
    client, server = await ws_pair()
    await server.write({"ok": True})
    assert await client.read() == {"ok": True}
    with config.set({"distributed.comm.max-message-size": "100kB"}):
        client, server = await ws_pair()
    await server.write(b"x" * 200_000)
    with pytest.raises(dc.CommClosedError):
        await asyncio.wait_for(client.read(), 5)


async def test_peer_vanishing_mid_message_is_comm_closed(ws_pair):
    client, server = await ws_pair()
    server.sock.write_message(frames.U64.pack(3), binary=True)
    server.sock.write_message(b"only one of three frames", binary=True)
    await asyncio.sleep(0.05)
    server.abort()
    with pytest.raises(dc.CommClosedError, match="closed by the peer"):
        await asyncio.wait_for(client.read(), 5)


async def test_writes_do_not_wait_for_the_reader(ws_pair):
    """A large write returns before the peer reads (as with tcp), so a peer
    that reads only after its own write does not deadlock."""
    client, server = await ws_pair()
    big = {"x": our_protocol.to_serialize(np.ones(32 * 2**20, "u1"))}
    await asyncio.wait_for(asyncio.gather(client.write(big), server.write(big)), 10)
    for comm in (client, server):
        got = await asyncio.wait_for(comm.read(), 10)
        assert got["x"].nbytes == 32 * 2**20


def test_address_helpers():
    assert dc.get_address_host_port("ws://127.0.0.1:8786") == ("127.0.0.1", 8786)
    assert dc.get_address_host_port("wss://[::1]:8786") == ("::1", 8786)
    assert dc.resolve_address("ws://localhost:80") == "ws://127.0.0.1:80"
    assert dc.get_address_host("wss://127.0.0.1:443") == "127.0.0.1"
