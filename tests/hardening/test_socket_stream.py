"""The comm's own socket loop (``stream.SocketStream`` under ``tcp.TCP``) on real
loopback sockets: tcp, tls (trustme) and unix, driven through the public API and
by raw peers writing crafted bytes. Every way a connection ends must deliver
what arrived whole, then raise ``CommClosedError`` naming the peer, never hang,
leak a socket or leave an exception nobody retrieved."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import socket
import ssl
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import distributed_comm as dc
from distributed_comm import protocol, stream
from distributed_comm.protocol import to_serialize

from .conftest import handshake_bytes, raw_message, wire

MiB = 2**20
SCHEMES = ["tcp", "tls", "unix"]


@pytest.fixture
def loop_errors(caplog):
    """Errors the event loop reports ("Future exception was never retrieved", ...)."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    yield
    gc.collect()
    bad = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not bad, caplog.text
    assert "never retrieved" not in caplog.text


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.asynccontextmanager
async def no_leaked_fds():
    """Every socket opened inside the block is closed soon after it ends."""
    before = open_fds()
    yield
    for _ in range(100):
        gc.collect()
        if open_fds() <= before:
            return
        await asyncio.sleep(0.02)
    assert open_fds() <= before, "sockets leaked"


def listen_args(scheme: str, tls_contexts) -> tuple[str, dict, dict]:
    """(listen address, listener kwargs, connect kwargs) for *scheme*."""
    server, client = tls_contexts
    if scheme == "tls":
        return "tls://127.0.0.1:0", {"ssl_context": server}, {"ssl_context": client}
    if scheme == "unix":
        return "unix://", {}, {}
    return "tcp://127.0.0.1:0", {}, {}


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return bytes(data)


def raw_connect(address: str, tls_client: ssl.SSLContext | None = None) -> socket.socket:
    """A blocking plain (or TLS) socket to a listener, past both handshakes.
    Blocking: call it, and its sends, in a thread."""
    scheme, location = address.split("://")
    if scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(location)
    else:
        sock = socket.create_connection(dc.parse_host_port(location))
    if scheme == "tls":
        sock = tls_client.wrap_socket(sock, server_hostname="127.0.0.1")
    sock.settimeout(10)
    sock.sendall(handshake_bytes())
    (head,) = struct.unpack("<Q", recv_exactly(sock, 8))
    recv_exactly(sock, head)
    return sock


async def raw_peer(listener, scheme: str, tls_contexts) -> socket.socket:
    client = tls_contexts[1] if scheme == "tls" else None
    return await asyncio.to_thread(raw_connect, listener.contact_address, client)


def message_bytes(msg) -> bytes:
    return wire(protocol.dumps(msg))


class Inbox:
    """A listener handler that reads until the comm ends, keeping what came."""

    def __init__(self) -> None:
        self.messages: list = []
        self.comms: list = []
        self.ended: asyncio.Future = asyncio.get_running_loop().create_future()

    async def __call__(self, comm) -> None:
        self.comms.append(comm)
        try:
            while True:
                self.messages.append(await comm.read())
        except Exception as exc:
            if not self.ended.done():
                self.ended.set_result(exc)

    async def end(self, timeout: float = 5) -> BaseException:
        return await asyncio.wait_for(asyncio.shield(self.ended), timeout)


def assert_names_peer(exc: BaseException, comm) -> None:
    assert isinstance(exc, dc.CommClosedError), repr(exc)
    assert comm.peer_address in str(exc), str(exc)


# -- a peer that ends the connection ------------------------------------------------


def mixed_messages(count: int) -> list[dict]:
    """Small, mid (own frame buffer) and read-ahead-straddling sizes, in one burst."""
    sizes = [0, 7, 70_000, 1000, 3 * 2**16 + 5, 50, 200_000]
    return [{"i": i, "pad": b"%d" % i * sizes[i % len(sizes)]} for i in range(count)]


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_half_close_delivers_every_message_before_the_end(scheme, tls_contexts, loop_errors):
    addr, listen_kw, _ = listen_args(scheme, tls_contexts)
    sent = mixed_messages(40)
    async with no_leaked_fds():
        inbox = Inbox()
        async with dc.listen(addr, inbox, **listen_kw) as listener:
            sock = await raw_peer(listener, scheme, tls_contexts)
            blob = b"".join(message_bytes(m) for m in sent)
            await asyncio.to_thread(sock.sendall, blob)
            sock.shutdown(socket.SHUT_WR)
            exc = await inbox.end()
            sock.close()
        assert inbox.messages == sent
        assert_names_peer(exc, inbox.comms[0])
        assert inbox.comms[0].closed()


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_message_trickled_byte_by_byte(scheme, tls_contexts, loop_errors):
    addr, listen_kw, _ = listen_args(scheme, tls_contexts)
    sent = [{"op": "trickle", "data": bytes(range(256)) * 3}, {"op": "next"}]
    blob = b"".join(message_bytes(m) for m in sent)

    def trickle(sock):
        for i in range(len(blob)):
            sock.sendall(blob[i : i + 1])
            if i % 64 == 0:
                time.sleep(0.001)

    async with no_leaked_fds():
        inbox = Inbox()
        async with dc.listen(addr, inbox, **listen_kw) as listener:
            sock = await raw_peer(listener, scheme, tls_contexts)
            await asyncio.to_thread(trickle, sock)
            sock.close()
            exc = await inbox.end()
        assert inbox.messages == sent
        assert_names_peer(exc, inbox.comms[0])


# The stream after some valid messages: what a reader must see once they are out.
BROKEN_TAILS = {
    "garbage": b"\xff" * 64,
    "a head larger than any message": raw_message(2**62, [2**62 - 16]),
    "more frames than allowed": raw_message(8 * 3, [1, 1]).replace(
        struct.pack("<Q", 2), struct.pack("<Q", 10**9), 1
    ),
    "a head ending inside a frame": raw_message(16 + 3, [10], b"x" * 10),
    "a head shorter than its prelude": raw_message(8, [1, 1, 1]),
}


@pytest.mark.parametrize("tail", list(BROKEN_TAILS))
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_broken_framing_after_valid_messages(scheme, tail, tls_contexts, loop_errors):
    addr, listen_kw, connect_kw = listen_args(scheme, tls_contexts)
    sent = mixed_messages(9)
    async with no_leaked_fds():
        inbox = Inbox()
        async with dc.listen(addr, inbox, **listen_kw) as listener:
            sock = await raw_peer(listener, scheme, tls_contexts)
            blob = b"".join(message_bytes(m) for m in sent) + BROKEN_TAILS[tail]
            await asyncio.to_thread(sock.sendall, blob)
            exc = await inbox.end()
            comm = inbox.comms[0]
            assert comm.closed()
            # the listener drops the hostile peer...
            sock.settimeout(5)
            assert await asyncio.to_thread(sock.recv, 10) == b""
            sock.close()
            # ...and goes on serving others
            inbox.ended = asyncio.get_running_loop().create_future()
            client = await dc.connect(listener.contact_address, timeout=5, **connect_kw)
            await client.write({"still": "serving"})
            await client.close()
            await inbox.end()
        assert inbox.messages == [*sent, {"still": "serving"}]
        assert_names_peer(exc, comm)
        # the reader is told why: a framing/limit error, not a generic "closed"
        assert "head" in str(exc) or "frames" in str(exc)


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (RST) instead of a clean FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
async def test_reset_in_the_middle_of_a_large_incoming_message(scheme, tls_contexts, loop_errors):
    addr, listen_kw, _ = listen_args(scheme, tls_contexts)
    whole = message_bytes({"x": to_serialize(bytes(32 * MiB))})
    async with no_leaked_fds():
        inbox = Inbox()
        async with dc.listen(addr, inbox, **listen_kw) as listener:
            sock = await raw_peer(listener, scheme, tls_contexts)
            await asyncio.to_thread(sock.sendall, message_bytes({"first": 1}) + whole[: 20 * MiB])
            raw = socket.socket(fileno=sock.detach()) if scheme == "tls" else sock
            reset(raw)
            exc = await inbox.end()
        assert inbox.messages == [{"first": 1}]
        assert_names_peer(exc, inbox.comms[0])


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
async def test_reset_while_a_large_write_is_queued(scheme, tls_contexts, loop_errors):
    addr, listen_kw, _ = listen_args(scheme, tls_contexts)
    async with no_leaked_fds():
        result = asyncio.get_running_loop().create_future()
        peer_ready = asyncio.Event()

        async def handler(comm):
            try:
                await comm.write({"x": to_serialize(bytes(64 * MiB))})
                assert comm.stream.writing()  # the kernel cannot take 64 MiB at once
                peer_ready.set()
                await asyncio.wait_for(comm.read(), 5)
            except Exception as exc:
                result.set_result((comm, exc))

        async with dc.listen(addr, handler, **listen_kw) as listener:
            sock = await raw_peer(listener, scheme, tls_contexts)
            await peer_ready.wait()
            await asyncio.to_thread(sock.recv, 2**16)
            raw = socket.socket(fileno=sock.detach()) if scheme == "tls" else sock
            reset(raw)
            comm, exc = await asyncio.wait_for(result, 5)
            assert_names_peer(exc, comm)
            assert comm.closed()
            with pytest.raises(dc.CommClosedError):
                await comm.write({"after": "reset"})
            await asyncio.wait_for(comm.close(), 5)


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_writer_learns_when_a_reader_that_never_read_goes_away(
    scheme, tls_contexts, loop_errors
):
    """200 MiB queued towards a comm nobody reads (its read-ahead fills up and
    stops), then that comm closes: the writer is told, nothing waits forever."""
    addr, listen_kw, connect_kw = listen_args(scheme, tls_contexts)
    payload = to_serialize(bytes(MiB))  # one buffer, referenced by every message
    async with no_leaked_fds():
        kept = []
        arrived = asyncio.Event()

        def keep(comm):
            kept.append(comm)
            arrived.set()

        async with dc.listen(addr, keep, **listen_kw) as listener:
            writer = await dc.connect(listener.contact_address, timeout=5, **connect_kw)
            await asyncio.wait_for(arrived.wait(), 5)
            for _ in range(200):
                await writer.write({"x": payload})
            await asyncio.sleep(0.2)
            assert writer.stream.writing()  # backpressure: far from all of it went out
            await kept[0].close()
            with pytest.raises(dc.CommClosedError) as info:
                await asyncio.wait_for(writer.read(), 5)
            assert_names_peer(info.value, writer)
            assert writer.closed()
            await asyncio.wait_for(writer.close(), 5)


# -- closing, aborting and cancelling our own comm ------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_close_sends_a_queued_large_message_first(scheme, tls_contexts, loop_errors):
    addr, listen_kw, connect_kw = listen_args(scheme, tls_contexts)
    data = np.arange(6 * MiB, dtype="u8")  # 48 MiB, every word distinct
    async with no_leaked_fds():
        inbox = Inbox()
        async with dc.listen(addr, inbox, **listen_kw) as listener:
            comm = await dc.connect(listener.contact_address, timeout=5, **connect_kw)
            await comm.write({"x": to_serialize(data)})
            await comm.write({"last": True})
            assert comm.stream.writing()
            await asyncio.wait_for(comm.close(), 5)
            exc = await inbox.end()
        assert len(inbox.messages) == 2
        np.testing.assert_array_equal(inbox.messages[0]["x"], data)
        assert inbox.messages[1] == {"last": True}
        assert isinstance(exc, dc.CommClosedError)


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_cancelling_a_close_that_waits_for_a_peer_that_never_reads(
    scheme, tls_contexts, loop_errors
):
    """close() flushes first, so it waits while the peer reads nothing (as in
    distributed); cancelling it (a timeout) must still close the socket."""
    addr, listen_kw, connect_kw = listen_args(scheme, tls_contexts)
    async with no_leaked_fds():
        kept = []
        async with dc.listen(addr, kept.append, **listen_kw) as listener:
            comm = await dc.connect(listener.contact_address, timeout=5, **connect_kw)
            for _ in range(100):  # more than the peer reads ahead (64 MiB)
                await comm.write({"x": to_serialize(bytes(MiB))})
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(comm.close(), 0.2)
            assert comm.closed()
            with pytest.raises(dc.CommClosedError):
                await asyncio.wait_for(comm.read(), 5)
            with pytest.raises(dc.CommClosedError):  # the peer hears of it
                while True:
                    await asyncio.wait_for(kept[0].read(), 5)


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_abort_wakes_a_waiting_reader(scheme, tls_contexts, loop_errors):
    addr, listen_kw, connect_kw = listen_args(scheme, tls_contexts)
    async with no_leaked_fds():
        inbox = Inbox()
        async with dc.listen(addr, inbox, **listen_kw) as listener:
            comm = await dc.connect(listener.contact_address, timeout=5, **connect_kw)
            reading = asyncio.ensure_future(comm.read())
            await asyncio.sleep(0.05)
            comm.abort()
            with pytest.raises(dc.CommClosedError):
                await asyncio.wait_for(reading, 5)
            assert isinstance(await inbox.end(), dc.CommClosedError)  # the peer hears of it


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_cancelled_read_aborts_the_comm(scheme, tls_contexts, loop_errors):
    """distributed's rule: a read interrupted mid-way leaves the stream at an
    unknown position, so the comm is aborted (and the peer sees it end)."""
    addr, listen_kw, connect_kw = listen_args(scheme, tls_contexts)
    async with no_leaked_fds():
        inbox = Inbox()
        async with dc.listen(addr, inbox, **listen_kw) as listener:
            comm = await dc.connect(listener.contact_address, timeout=5, **connect_kw)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(comm.read(), 0.1)
            assert comm.closed()
            with pytest.raises(dc.CommClosedError):
                await comm.read()
            with pytest.raises(dc.CommClosedError):
                await comm.write({"x": 1})
            assert isinstance(await inbox.end(), dc.CommClosedError)


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_concurrent_reads_on_one_comm_do_not_hang(scheme, tls_contexts, loop_errors):
    addr, listen_kw, connect_kw = listen_args(scheme, tls_contexts)
    async with no_leaked_fds():

        async def send_later(comm):
            await asyncio.sleep(0.1)
            with contextlib.suppress(dc.CommClosedError):
                await comm.write({"one": 1})
                await comm.write({"two": 2})

        async with dc.listen(addr, send_later, **listen_kw) as listener:
            comm = await dc.connect(listener.contact_address, timeout=5, **connect_kw)
            results = await asyncio.wait_for(
                asyncio.gather(comm.read(), comm.read(), return_exceptions=True), 5
            )
            await comm.close()
        # Both got a message, or the comm was given up (as distributed does):
        # never a message swallowed while the comm stays open.
        if any(isinstance(r, BaseException) for r in results):
            assert comm.closed()
            assert all(isinstance(r, (dc.CommClosedError, RuntimeError)) for r in results)
        else:
            assert sorted(map(str, results)) == ["{'one': 1}", "{'two': 2}"]


# -- TLS ------------------------------------------------------------------------------


async def test_tls_bytes_left_in_the_ssl_layer_at_the_read_budget_are_not_stranded(
    tls_contexts, monkeypatch, loop_errors
):
    # One receive per readiness event makes deterministic what a 16 MiB burst
    # does by chance: the event ends while the last TLS record is half read.
    monkeypatch.setattr(stream, "_MAX_READ_PER_EVENT", 1)
    sent = [{"big": b"x" * 100_000}, {"small": 1}]
    inbox = Inbox()
    async with dc.listen("tls://127.0.0.1:0", inbox, ssl_context=tls_contexts[0]) as listener:
        sock = await raw_peer(listener, "tls", tls_contexts)
        # one sendall: the small message shares the big one's last TLS record
        await asyncio.to_thread(sock.sendall, b"".join(message_bytes(m) for m in sent))
        try:
            for _ in range(50):
                if len(inbox.messages) == 2:
                    break
                await asyncio.sleep(0.02)
            assert inbox.messages == sent
        finally:
            sock.close()


async def test_tls_burst_of_small_messages_and_a_100_mib_one(tls_contexts, loop_errors):
    data = np.arange(100 * MiB // 8, dtype="u8")
    async with no_leaked_fds():
        inbox = Inbox()
        async with dc.listen("tls://127.0.0.1:0", inbox, ssl_context=tls_contexts[0]) as listener:
            comm = await dc.connect(
                listener.contact_address, timeout=5, ssl_context=tls_contexts[1]
            )
            for i in range(5000):  # queued back to back, read in bulk
                await comm.write({"i": i})
            await comm.write({"x": to_serialize(data)})
            await comm.write({"i": "after"})
            await asyncio.wait_for(comm.close(), 10)
            await inbox.end(10)
        assert inbox.messages[:5000] == [{"i": i} for i in range(5000)]
        assert hashlib.sha1(inbox.messages[5000]["x"]).digest() == hashlib.sha1(data).digest()
        assert inbox.messages[5001:] == [{"i": "after"}]


# -- many comms --------------------------------------------------------------------------


async def test_many_comms_streaming_while_one_reader_is_slow(loop_errors):
    """200 comms each send a stream of small messages; one handler does not read
    until the rest are done, so its read-ahead stops (over 1024 queued messages).
    The others all finish, in order, and the slow one loses nothing."""
    count, per_comm, slow_count = 200, 50, 3000
    async with no_leaked_fds():
        received: dict[int, list] = {}
        slow_gate = asyncio.Event()

        async def handler(comm):
            first = await comm.read()
            got = received.setdefault(first["c"], [first["i"]])
            if first["c"] == 0:
                await slow_gate.wait()
            with contextlib.suppress(dc.CommClosedError):
                while True:
                    got.append((await comm.read())["i"])

        async with dc.listen("tcp://127.0.0.1:0", handler) as listener:

            async def client(c, n):
                comm = await dc.connect(listener.contact_address, timeout=10)
                for i in range(n):
                    await comm.write({"c": c, "i": i, "pad": b"p" * 500})
                    if i % 10 == 0:
                        await asyncio.sleep(0)
                await comm.close()

            slow = asyncio.ensure_future(client(0, slow_count))
            await asyncio.wait_for(
                asyncio.gather(*(client(c, per_comm) for c in range(1, count))), 20
            )
            for _ in range(200):
                if sum(len(v) for c, v in received.items() if c) == (count - 1) * per_comm:
                    break
                await asyncio.sleep(0.02)
            assert {c: v for c, v in received.items() if c} == {
                c: list(range(per_comm)) for c in range(1, count)
            }
            slow_gate.set()
            await asyncio.wait_for(slow, 10)
            for _ in range(100):
                if len(received[0]) == slow_count:
                    break
                await asyncio.sleep(0.02)
            assert received[0] == list(range(slow_count))


# -- stock distributed on the other end -------------------------------------------------


def interop_messages() -> list:
    array = np.arange(3 * MiB, dtype="f8")  # 24 MiB: a frame of its own, written as a view
    return [*mixed_messages(14), {"array": to_serialize(array)}, {"last": b"z" * 100}]


def assert_same_messages(got: list, sent: list) -> None:
    assert len(got) == len(sent)
    for g, s in zip(got, sent, strict=True):
        if "array" in s:
            np.testing.assert_array_equal(g["array"], s["array"].data)
        else:
            assert g == s


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
@pytest.mark.parametrize("ours", ["listener", "connector"])
async def test_bursts_to_and_from_stock_distributed(scheme, ours, tls_contexts, loop_errors):
    from distributed import comm as stock

    addr, listen_kw, connect_kw = listen_args(scheme, tls_contexts)
    listen, connect = (
        (dc.listen, stock.connect) if ours == "listener" else (stock.listen, dc.connect)
    )
    sent = interop_messages()

    async def echo_all(comm):
        got = [await comm.read() for _ in sent]
        for msg in got:
            await comm.write(msg)
        await comm.close()

    async with no_leaked_fds():
        listener = listen(addr, echo_all, **listen_kw)
        await listener.start()
        try:
            comm = await connect(listener.contact_address, timeout=5, **connect_kw)
            for msg in sent:
                await comm.write(msg)
            got = [await asyncio.wait_for(comm.read(), 10) for _ in sent]
            with pytest.raises(stock.CommClosedError if ours == "listener" else dc.CommClosedError):
                await asyncio.wait_for(comm.read(), 5)
            await comm.close()
        finally:
            listener.stop()
        assert_same_messages(got, sent)


# -- forgotten comms ----------------------------------------------------------------------


async def test_an_unclosed_comm_is_closed_with_a_warning_when_collected(caplog, loop_errors):
    caplog.set_level(logging.WARNING, logger="distributed_comm")
    async with no_leaked_fds():
        inbox = Inbox()
        async with dc.listen("tcp://127.0.0.1:0", inbox) as listener:
            comm = await dc.connect(listener.contact_address, timeout=5)
            await comm.write({"hello": 1})
            name = repr(comm)
            del comm
            gc.collect()
            assert "dangling" in caplog.text and name in caplog.text
            exc = await inbox.end()
        assert inbox.messages == [{"hello": 1}]
        assert isinstance(exc, dc.CommClosedError)


# -- a frame too large to allocate ---------------------------------------------------


async def test_a_frame_too_large_to_allocate_fails_the_read(caplog, loop_errors):
    """Limits raised above what this machine can allocate (or a strict-overcommit
    host): the reader must get an error and the comm must end, not go on reading
    the peer's next bytes as if they were the start of a message."""
    from distributed_comm import config

    caplog.set_level(logging.WARNING)
    with config.set({"distributed.comm.max-message-size": 2**60}):
        inbox = Inbox()
        async with dc.listen("tcp://127.0.0.1:0", inbox) as listener:
            sock = await raw_peer(listener, "tcp", None)
            await asyncio.to_thread(sock.sendall, raw_message(16, [2**50]))
            await asyncio.sleep(0.1)
            await asyncio.to_thread(sock.sendall, message_bytes({"smuggled": True}))
            with contextlib.suppress(asyncio.TimeoutError):
                await inbox.end(1)
            sock.close()
    assert {"smuggled": True} not in inbox.messages
    assert inbox.comms[0].closed()
    assert "Exception in callback" not in caplog.text


# -- SocketStream.write's own contract -------------------------------------------------

EMPTY_PART = """
import asyncio, socket
from distributed_comm import frames
from distributed_comm.stream import SocketStream

async def main():
    a, b = socket.socketpair()
    sender = SocketStream(a, frames.Limits(10, 2**20))
    sender.write([b"abc", b""])
    await asyncio.wait_for(sender.drain(), 1)
    assert b.recv(10) == b"abc"
    print("ok")

asyncio.run(main())
"""


def test_an_empty_buffer_among_the_parts_does_not_spin_forever():
    # In a child process: the bug blocks its event loop thread for good.
    try:
        done = subprocess.run(
            [sys.executable, "-c", EMPTY_PART],
            capture_output=True,
            text=True,
            timeout=2,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
        )
    except subprocess.TimeoutExpired:
        pytest.fail("SocketStream.write([b'abc', b'']) never returned")
    assert done.stdout.strip() == "ok", done.stderr
