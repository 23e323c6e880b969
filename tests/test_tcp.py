"""tcp:// and tls:// over real loopback sockets (and real TLS with trustme certificates)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import ssl
import struct

import numpy as np
import pytest
import trustme
from test_protocol_interop import CASES, allow_uuid_enums, assert_same  # noqa: F401

import distributed_comm as comm
import distributed_comm.protocol as ours
from distributed_comm import config, frames
from distributed_comm.protocol import to_serialize
from distributed_comm.tcp import TCP, TLS, TCPListener

MiB = 2**20


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def tls(ca):
    """(server context, client context) trusting each other through one CA."""
    cert = ca.issue_cert("127.0.0.1", "::1", "localhost", "server.example")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    ca.configure_trust(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    cert.configure_cert(client)
    return server, client


HOSTS = [
    "127.0.0.1",
    pytest.param("[::1]", marks=pytest.mark.skipif(not _has_ipv6(), reason="no IPv6")),
]


@pytest.fixture(params=["tcp", "tls"])
def scheme(request):
    return request.param


def args_for(scheme, tls):
    """(listen kwargs, connect kwargs) for *scheme*."""
    if scheme == "tcp":
        return {}, {}
    return {"ssl_context": tls[0]}, {"ssl_context": tls[1]}


async def echo(c):
    try:
        while True:
            await c.write(await c.read())
    except comm.CommClosedError:
        pass


async def hung_up(reader: asyncio.StreamReader) -> None:
    """Wait (bounded) until the other end closes the connection, cleanly or by reset."""
    try:
        while await asyncio.wait_for(reader.read(2**16), 5):
            pass
    except ConnectionResetError:
        pass


async def pair(scheme, tls, handler=echo, host="127.0.0.1", deserialize=True):
    listen_args, connect_args = args_for(scheme, tls)
    listener = await comm.listen(
        f"{scheme}://{host}:0", handler, deserialize=deserialize, **listen_args
    )
    client = await comm.connect(listener.contact_address, **connect_args)
    return listener, client


COMM_CASES = {name: c for name, c in CASES.items() if set(c[2]) <= {"serializers"}}


@pytest.mark.parametrize("host", HOSTS)
async def test_echo_every_message_kind(scheme, tls, host):
    """The server forwards what it reads without deserializing it, as a scheduler does."""
    listener, client = await pair(scheme, tls, host=host, deserialize=False)
    assert isinstance(client, TLS if scheme == "tls" else TCP)
    assert client.peer_address == listener.contact_address
    assert client.local_address.startswith(f"{scheme}://{host}:")
    try:
        for name, (make, expected, kwargs) in COMM_CASES.items():
            await client.write(make(ours), **kwargs)
            assert_same(await client.read(), expected, name)
    finally:
        await client.close()
        listener.stop()


async def test_write_returns_the_bytes_on_the_wire():
    """A raw peer echoes our handshake, then counts every byte we send."""
    counted = asyncio.get_running_loop().create_future()

    async def raw_peer(reader, writer):
        head = await reader.readexactly(8)
        handshake = head + await reader.readexactly(frames.U64.unpack(head)[0])
        writer.write(handshake)
        counted.set_result(len(await reader.read()))

    server = await asyncio.start_server(raw_peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await comm.connect(f"tcp://127.0.0.1:{port}")
    n = await client.write({"x": to_serialize(np.arange(MiB, dtype="u1")), "op": "data"})
    n += await client.write({"op": "small"})
    await client.close()
    assert n == await asyncio.wait_for(counted, 10)
    assert n > MiB
    server.close()


@pytest.mark.slow
async def test_one_gib_payload():
    """1 GiB of bytes through tcp, checked on arrival; DC_STRESS=1 also sends it back."""
    payload = np.arange(2**30, dtype="u1").tobytes()
    stress = bool(os.environ.get("DC_STRESS"))

    async def check(c):
        got = (await c.read())["x"]
        await c.write({"same": got == payload, "n": len(got)})
        if stress:
            await c.write({"x": to_serialize(got)})

    listener, client = await pair("tcp", None, check)
    try:
        n = await asyncio.wait_for(client.write({"x": to_serialize(payload)}), 60)
        assert n > 2**30
        assert await asyncio.wait_for(client.read(), 60) == {"same": True, "n": 2**30}
        if stress:
            assert (await asyncio.wait_for(client.read(), 60))["x"] == payload
    finally:
        await client.close()
        listener.stop()


async def test_many_messages_in_flight_both_ways(scheme, tls):
    """Both ends write without waiting for replies; order and content survive."""
    n = 300
    received_by_server = []

    async def chatty(c):
        async def reader():
            for _ in range(n):
                received_by_server.append(await c.read())

        task = asyncio.create_task(reader())
        for i in range(n):
            await c.write({"from": "server", "i": i, "pad": b"s" * (i * 997 % 70000)})
        await task

    listener, client = await pair(scheme, tls, chatty)
    try:
        writes = [
            await client.write({"from": "client", "i": i, "pad": b"c" * (i * 991 % 70000)})
            for i in range(n)
        ]
        assert all(w > 0 for w in writes)
        got = [await client.read() for _ in range(n)]
        assert [m["i"] for m in got] == list(range(n))
        assert all(m["pad"] == b"s" * (m["i"] * 997 % 70000) for m in got)
        for _ in range(100):
            if len(received_by_server) == n:
                break
            await asyncio.sleep(0.05)
        assert [m["i"] for m in received_by_server] == list(range(n))
    finally:
        await client.close()
        listener.stop()


async def test_concurrent_comms_on_one_listener(scheme, tls):
    listener = await comm.listen(f"{scheme}://127.0.0.1:0", echo, **args_for(scheme, tls)[0])

    async def talk(k):
        c = await comm.connect(listener.contact_address, **args_for(scheme, tls)[1])
        for i in range(20):
            await c.write({"k": k, "i": i, "x": to_serialize(np.full(1000 * k, i))})
            msg = await c.read()
            assert msg["k"] == k and msg["i"] == i and (msg["x"] == i).all()
        await c.close()

    try:
        await asyncio.wait_for(asyncio.gather(*(talk(k) for k in range(10))), 30)
    finally:
        listener.stop()


async def test_peer_closing_while_we_read(scheme, tls):
    server_side = asyncio.Queue()

    async def keep(c):
        await server_side.put(c)

    listener, client = await pair(scheme, tls, keep)
    server_comm = await server_side.get()
    reading = asyncio.create_task(client.read())
    await asyncio.sleep(0.05)
    await server_comm.close()
    with pytest.raises(comm.CommClosedError, match=listener.contact_address.split("://")[1]):
        await asyncio.wait_for(reading, 5)
    assert client.closed()
    with pytest.raises(comm.CommClosedError):
        await client.read()
    with pytest.raises(comm.CommClosedError):
        await client.write({"op": "late"})
    listener.stop()


async def test_peer_closing_while_we_write(scheme, tls):
    server_side = asyncio.Queue()

    async def keep(c):
        await server_side.put(c)

    listener, client = await pair(scheme, tls, keep)
    server_comm = await server_side.get()
    server_comm.abort()
    payload = np.zeros(8 * MiB, "u1")
    with pytest.raises(comm.CommClosedError):
        for _ in range(200):  # the failure shows up once the kernel has seen the reset
            await client.write({"x": to_serialize(payload)})
            await asyncio.sleep(0.01)
    assert client.closed()
    listener.stop()


async def test_closing_our_side_during_a_read_fails_that_read(scheme, tls):
    listener, client = await pair(scheme, tls, lambda c: None)
    reading = asyncio.create_task(client.read())
    await asyncio.sleep(0.05)
    client.abort()
    with pytest.raises(comm.CommClosedError):
        await asyncio.wait_for(reading, 5)
    listener.stop()


async def test_cancelled_read_mid_message_aborts_the_comm():
    """Half a message read: the stream position is lost, so the comm must not be reused."""
    started = asyncio.Event()

    async def half(c):
        stream = c.stream
        # a valid H and prelude announcing 1 MiB, but only part of it
        stream.write([struct.pack("<3Q", 16, 1, MiB) + b"x" * 1000])
        started.set()
        await asyncio.sleep(10)

    listener, client = await pair("tcp", None, half)
    await started.wait()
    reading = asyncio.create_task(client.read())
    await asyncio.sleep(0.1)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert client.closed()
    with pytest.raises(comm.CommClosedError):
        await client.read()
    listener.stop()


async def test_close_flushes_pending_writes():
    got = asyncio.Queue()

    async def collect(c):
        await got.put(await c.read())

    listener, client = await pair("tcp", None, collect)
    payload = np.arange(64 * MiB, dtype="u1")
    await client.write({"x": to_serialize(payload)})
    await client.close()  # returns once the data has left
    msg = await asyncio.wait_for(got.get(), 20)
    np.testing.assert_array_equal(msg["x"], payload)
    listener.stop()


async def test_received_arrays_are_writeable_and_own_buffers():
    listener, client = await pair("tcp", None)
    a, b = np.arange(MiB, dtype="f8"), np.ones(MiB, dtype="i4")
    await client.write({"a": to_serialize(a), "b": to_serialize(b)})
    msg = await client.read()
    assert msg["a"].flags.writeable and msg["b"].flags.writeable
    assert not np.shares_memory(msg["a"], msg["b"])
    np.testing.assert_array_equal(msg["a"], a)
    await client.close()
    listener.stop()


async def test_connect_retries_until_a_listener_appears():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def late_listener():
        await asyncio.sleep(0.5)
        return await comm.listen(f"tcp://127.0.0.1:{port}", echo)

    task = asyncio.create_task(late_listener())
    client = await comm.connect(f"tcp://127.0.0.1:{port}", timeout=10)
    await client.write({"op": "hi"})
    assert await client.read() == {"op": "hi"}
    await client.close()
    (await task).stop()


async def test_connect_gives_up_with_oserror():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError, match="Timed out"):
        await comm.connect(f"tcp://127.0.0.1:{port}", timeout=0.3)


async def test_tls_untrusted_certificate_is_fatal(tls):
    other = trustme.CA()
    wrong = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    other.configure_trust(wrong)
    listener = await comm.listen("tls://127.0.0.1:0", echo, ssl_context=tls[0])
    try:
        with pytest.raises(comm.FatalCommClosedError, match="not trusted|verify"):
            await comm.connect(listener.contact_address, ssl_context=wrong, timeout=5)
        # the listener survives a peer failing TLS
        good = await comm.connect(listener.contact_address, ssl_context=tls[1])
        await good.write({"op": "still serving"})
        assert await good.read() == {"op": "still serving"}
        await good.close()
    finally:
        listener.stop()


async def test_tls_sni_and_peer_certificate(ca, tls):
    seen = []
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    sni_cert = ca.issue_cert("server.example")

    def on_sni(sock, name, ctx):
        seen.append(name)
        if name == "server.example":
            other = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            sni_cert.configure_cert(other)
            sock.context = other

    server_ctx.sni_callback = on_sni
    listener = await comm.listen("tls://127.0.0.1:0", echo, ssl_context=server_ctx)
    try:
        client = await comm.connect(
            listener.contact_address, ssl_context=tls[1], server_hostname="server.example"
        )
        assert seen == ["server.example"]
        assert ("DNS", "server.example") in client.extra_info["peercert"]["subjectAltName"]
        name, protocol, bits = client.extra_info["cipher"]
        assert protocol.startswith("TLS") and bits >= 128
        await client.close()
    finally:
        listener.stop()


async def test_tls_needs_an_ssl_context():
    with pytest.raises(TypeError, match="ssl.SSLContext"):
        comm.listen("tls://127.0.0.1:0", echo, ssl_context="cert.pem")
    with pytest.raises(TypeError, match="ssl.SSLContext.*'nope'"):
        await comm.connect("tls://127.0.0.1:1", ssl_context="nope", timeout=1)


async def test_require_encryption_refuses_tcp(tls):
    with pytest.raises(RuntimeError, match="encryption required.*tcp://127.0.0.1:1"):
        await comm.connect("tcp://127.0.0.1:1", require_encryption=True, timeout=1)
    with pytest.raises(RuntimeError, match="encryption required"):
        comm.listen("tcp://127.0.0.1:0", echo, require_encryption=True)
    listener = await comm.listen(
        "tls://127.0.0.1:0", echo, ssl_context=tls[0], require_encryption=True
    )
    client = await comm.connect(
        listener.contact_address, ssl_context=tls[1], require_encryption=True
    )
    await client.close()
    listener.stop()


async def test_garbage_and_oversized_peers_are_dropped_listener_keeps_serving(caplog):
    listener = await comm.listen("tcp://127.0.0.1:0", echo)
    host, port = comm.get_address_host_port(listener.contact_address)
    for garbage in [b"GET / HTTP/1.1\r\n\r\n", struct.pack("<Q", 2**62), b"\x00" * 64]:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(garbage)
        await writer.drain()
        # the listener hangs up on a peer whose handshake cannot be a message
        await hung_up(reader)
        writer.close()
    client = await comm.connect(listener.contact_address)
    await client.write({"op": "fine"})
    assert await client.read() == {"op": "fine"}
    await client.close()
    listener.stop()


async def test_oversized_message_is_refused_before_allocating():
    async def huge(c):
        # announces 1 TiB in one frame: the reader must refuse, not try to allocate it
        c.stream.write([struct.pack("<3Q", 16, 1, 2**40)])
        await asyncio.sleep(5)

    with config.set({"distributed.comm.max-message-size": "1 GiB"}):
        listener, client = await pair("tcp", None, huge)
        with pytest.raises(comm.CommClosedError, match="max-message-size"):
            await asyncio.wait_for(client.read(), 5)
    assert client.closed()
    listener.stop()


async def test_plain_peer_on_tls_listener_is_dropped(tls, caplog):
    listener = await comm.listen("tls://127.0.0.1:0", echo, ssl_context=tls[0])
    host, port = comm.get_address_host_port(listener.contact_address)
    with caplog.at_level(logging.WARNING, logger="distributed_comm.tcp"):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"\x00" * 100)
        await hung_up(reader)
        writer.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "SSL" in warnings[0].getMessage()  # Tornado's or ours
    client = await comm.connect(listener.contact_address, ssl_context=tls[1])
    await client.close()
    listener.stop()


async def test_stop_aborts_comms_still_handshaking():
    listener = await comm.listen("tcp://127.0.0.1:0", echo)
    host, port = comm.get_address_host_port(listener.contact_address)
    reader, writer = await asyncio.open_connection(host, port)  # never sends its handshake
    await asyncio.wait_for(reader.readexactly(8), 5)  # the listener's handshake arrives
    assert len(listener._handshaking) == 1
    listener.stop()
    await hung_up(reader)  # ... and then it hangs up
    assert not listener._handshaking
    writer.close()


async def test_stopped_listener_keeps_established_comms():
    handled = asyncio.Event()

    async def mark_and_echo(c):
        handled.set()  # the server end finished its handshake too
        await echo(c)

    listener, client = await pair("tcp", None, mark_and_echo)
    await asyncio.wait_for(handled.wait(), 5)
    listener.stop()
    await client.write({"op": 1})
    assert await client.read() == {"op": 1}
    await client.close()
    with pytest.raises(OSError):
        await comm.connect(listener.contact_address, timeout=0.3)


async def test_handshake_information(scheme, tls):
    server_side = asyncio.Queue()

    async def keep(c):
        await server_side.put(c)

    listener, client = await pair(scheme, tls, keep)
    server_comm = await server_side.get()
    for c in (client, server_comm):
        assert c.local_info["address"] == c.local_address
        assert c.remote_info["address"] == c.peer_address
        assert c.handshake_options == {"pickle-protocol": 5, "compression": None}
        assert c.same_host
    assert server_comm.peer_address == client.local_address
    await client.close()
    listener.stop()


async def test_contact_address_is_concrete():
    listener = await comm.listen("tcp://0.0.0.0:0", echo)
    try:
        host, port = comm.get_address_host_port(listener.contact_address)
        assert host != "0.0.0.0" and port > 0
        assert listener.listen_address == f"tcp://0.0.0.0:{port}"
        client = await comm.connect(f"tcp://127.0.0.1:{port}")
        await client.close()
    finally:
        listener.stop()


def test_listener_not_started():
    listener = TCPListener("127.0.0.1:0", echo)
    with pytest.raises(ValueError, match="non-started"):
        listener.listen_address  # noqa: B018


async def test_dangling_comm_is_closed_with_a_warning(caplog):
    listener, client = await pair("tcp", None)
    stream = client.stream
    with caplog.at_level(logging.WARNING, logger="distributed_comm.tcp"):
        del client
        gc.collect()
    assert stream.closed()
    assert "dangling" in caplog.text
    listener.stop()


async def test_a_dangling_comm_still_delivers_what_it_wrote(caplog):
    """A handler that writes and returns without closing: its messages arrive,
    then the end (the comm is closed once its writes are sent, not before)."""
    payload = np.arange(16 * MiB, dtype="u1")

    async def write_and_forget(c):
        for i in range(3):
            await c.write({"i": i, "x": to_serialize(payload)})

    with caplog.at_level(logging.WARNING, logger="distributed_comm.tcp"):
        listener, client = await pair("tcp", None, write_and_forget)
        for i in range(3):
            msg = await asyncio.wait_for(client.read(), 20)
            assert msg["i"] == i
            np.testing.assert_array_equal(msg["x"], payload)
        with pytest.raises(comm.CommClosedError):
            await asyncio.wait_for(client.read(), 20)
    assert "dangling" in caplog.text
    listener.stop()


async def test_socket_options():
    listener, client = await pair("tcp", None)
    sock = client.stream.socket
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000
    await client.close()
    listener.stop()


def _strided(size):
    return to_serialize(np.zeros(2 * size, "u1")[::2])  # serializing it copies


def _objects(size):
    return to_serialize(np.arange(size // 4).astype(object))  # pickled, int by int


# payload -> (what goes to the offload thread on the sender, on the receiver)
OFFLOAD_CASES = {
    "small message": (lambda size: "x", [], []),
    "numpy array": (lambda size: to_serialize(np.zeros(size, "u1")), [], []),
    "bytes": (lambda size: to_serialize(b"x" * size), [], []),
    "bytes inline in msgpack": (lambda size: b"x" * size, [], ["loads"]),
    "array copied to serialize": (_strided, ["dumps_with_hooks"], []),
    "object array, pickled": (_objects, ["dumps_with_hooks"], ["loads"]),
    "pickled by fallback": (lambda size: [np.zeros(size, "u1")], ["dumps_with_hooks"], ["loads"]),
    "1000 small arrays": (
        lambda size: {i: to_serialize(np.ones(4)) for i in range(1000)},
        ["dumps_with_hooks"],
        ["loads"],
    ),
}


@pytest.mark.parametrize("case", OFFLOAD_CASES)
async def test_offloaded_by_work_not_by_size(monkeypatch, case):
    """Messages over the offload size go to the offload thread when
    (de)serializing them reads or copies that much, not when payloads are
    sent and received as they are (the hop costs more than the work)."""
    from distributed_comm import tcp

    make, on_sender, on_receiver = OFFLOAD_CASES[case]
    offloaded = []
    real = tcp.offload

    def spy(func):
        offloaded.append(func.func.__name__)
        return real(func)

    received = asyncio.Queue()

    async def handler(comm):
        await received.put(await comm.read())
        await comm.write("ok")

    monkeypatch.setattr(tcp, "offload", spy)
    listener, client = await pair("tcp", None, handler=handler)
    try:
        await client.write({"x": make(11 * MiB)})
        sent = list(offloaded)
        assert (await received.get())["x"] is not None
        assert await client.read() == "ok"
        assert (sent, offloaded[len(sent) :]) == (on_sender, on_receiver)
    finally:
        await client.close()
        listener.stop()


class _CountingCodec:
    """Our protocol with each encoding step recorded; ``dumps`` must not be
    reached when the shortcut pair is offered (it would encode again)."""

    def __init__(self, with_hooks: bool = True):
        self.calls: list[str] = []
        if with_hooks:
            self.dumps_with_hooks = self._with_hooks

    def dumps_plain(self, msg):
        self.calls.append("plain")
        return ours.dumps_plain(msg)

    def _with_hooks(self, msg, **kwargs):
        self.calls.append("hooks")
        return ours.dumps_with_hooks(msg, **kwargs)

    def dumps(self, msg, **kwargs):
        self.calls.append("dumps")
        return ours.dumps(msg, **kwargs)

    def loads(self, msg_frames, **kwargs):
        return ours.loads(msg_frames, **kwargs)


@pytest.mark.parametrize("with_hooks", [True, False])
async def test_each_message_is_encoded_once(monkeypatch, with_hooks):
    codec = _CountingCodec(with_hooks)
    monkeypatch.setattr(comm.tcp.TCPConnector, "codec", codec)
    received = asyncio.Queue()

    async def handle(c):
        for _ in range(2):
            await received.put(await c.read())

    async with comm.listen("tcp://127.0.0.1:0", handle) as listener:
        c = await comm.connect(listener.contact_address)
        codec.calls.clear()  # the handshake's write
        await c.write({"op": "ping", "n": 1})
        plain_calls = list(codec.calls)
        codec.calls.clear()
        await c.write({"op": "data", "x": to_serialize(b"abc")})
        assert await received.get() == {"op": "ping", "n": 1}
        assert await received.get() == {"op": "data", "x": b"abc"}
        await c.close()
    if with_hooks:
        assert plain_calls == ["plain"] and codec.calls == ["plain", "hooks"]
    else:  # half the pair: the codec's own dumps, for every message
        assert plain_calls == ["dumps"] and codec.calls == ["dumps"]
