"""Faults during work: a peer process killed mid-message (both directions),
cancelled reads and writes, a comm closed while another task writes, and an event
loop shut down with comms open. Each ends in ``CommClosedError`` or a clean close,
with no leaked sockets or threads and no "Task was destroyed but it is pending"."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import psutil
import pytest

import distributed_comm as dc
from distributed_comm.protocol import to_serialize

MiB = 2**20
STRESS = bool(os.environ.get("DC_STRESS"))
SIZE = 2**30 if STRESS else 256 * MiB

# A peer in its own process. "listen": a listener whose handler keeps each comm
# without reading. "send": connects to argv[2] and writes one SIZE-byte message
# framed as our writer does, but stops halfway. Both print a line once ready.
PEER = r"""
import asyncio, sys
import distributed_comm as dc
from distributed_comm import frames, protocol

async def main(mode, arg, size):
    if mode == "listen":
        kept = []
        listener = await dc.listen("tcp://127.0.0.1:0", kept.append)
        print(listener.contact_address, flush=True)
        await asyncio.sleep(3600)
    comm = await dc.connect(arg)
    msg_frames = protocol.dumps({"x": protocol.to_serialize(bytes(size))})
    parts, total = frames.encode(msg_frames)
    stream = comm.stream
    sent = 0
    for part in parts:
        view = memoryview(part).cast("B")
        if sent + view.nbytes > total // 2:
            view = view[: total // 2 - sent]
        stream.write([view])
        await stream.drain()
        sent += view.nbytes
        if sent >= total // 2:
            break
    print("half", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def start_peer(mode: str, arg: str = "") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PEER, mode, arg, str(SIZE)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )


async def readline(proc: subprocess.Popen, timeout: float = 60) -> str:
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
    assert line, "peer process died"
    return line.strip()


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()


class Leaks:
    """Open fds and threads before and after; compared once things settle."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.fds = self.process.num_fds()
        self.threads = {t.ident for t in threading.enumerate()}

    async def assert_none(self) -> None:
        for _ in range(100):
            gc.collect()
            if self.process.num_fds() <= self.fds:
                break
            await asyncio.sleep(0.05)
        assert self.process.num_fds() <= self.fds, "sockets leaked"
        # the offload thread is made once per process; asyncio_N is the loop's
        # default executor (the test reads the peer's stdout on it)
        extra = [
            t
            for t in threading.enumerate()
            if t.ident not in self.threads
            and not t.name.startswith(("distributed_comm-offload", "asyncio_"))
        ]
        assert not extra, extra


@pytest.fixture
def no_pending_task_warnings(caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    yield
    gc.collect()
    assert "Task was destroyed but it is pending" not in caplog.text
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


async def test_peer_killed_while_we_send_a_large_message(no_pending_task_warnings):
    leaks = Leaks()
    peer = start_peer("listen")
    try:
        address = await readline(peer)
        comm = await dc.connect(address, timeout=20)
        payload = np.ones(SIZE, dtype="u1")
        # the peer never reads: most of the message waits in buffers when it dies
        n = await asyncio.wait_for(comm.write({"x": to_serialize(payload)}), 60)
        assert n > SIZE
        await asyncio.sleep(0.2)
        assert not comm.closed()
        kill(peer)
        with pytest.raises(dc.CommClosedError):
            await asyncio.wait_for(comm.read(), 10)
        assert comm.closed()
        with pytest.raises(dc.CommClosedError):
            await comm.write({"op": "after"})
        await comm.close()  # harmless now
    finally:
        if peer.poll() is None:
            kill(peer)
    del payload
    await leaks.assert_none()


async def test_peer_killed_while_it_sends_us_a_large_message(no_pending_task_warnings):
    leaks = Leaks()
    outcome: asyncio.Future = asyncio.get_running_loop().create_future()

    async def receive(comm):
        if outcome.done():  # echo_check's comm, after the killed peer's
            return await comm.read()
        try:
            await comm.read()
        except BaseException as exc:
            outcome.set_result((exc, comm.closed()))
        else:
            outcome.set_result((None, comm.closed()))

    async with dc.listen("tcp://127.0.0.1:0", receive) as listener:
        peer = start_peer("send", listener.contact_address)
        try:
            assert await readline(peer) == "half"
            assert not outcome.done()  # our read is waiting for the rest
            rss_mid = psutil.Process().memory_info().rss
            kill(peer)
            exc, closed = await asyncio.wait_for(outcome, 10)
        finally:
            if peer.poll() is None:
                kill(peer)
        assert isinstance(exc, dc.CommClosedError), exc
        assert closed
        await echo_check(listener)
    gc.collect()
    # the half-filled buffer for the message was released with the comm
    assert psutil.Process().memory_info().rss < rss_mid + 16 * MiB
    await leaks.assert_none()


async def echo_check(listener) -> None:
    """The listener still takes new comms (its handler here reads one message)."""
    comm = await dc.connect(listener.contact_address, timeout=5)
    await comm.write({"op": "hello"})
    await comm.close()


async def test_cancelling_a_blocked_read_aborts_only_that_comm(no_pending_task_warnings):
    leaks = Leaks()
    accepted: asyncio.Queue = asyncio.Queue()
    async with dc.listen("tcp://127.0.0.1:0", accepted.put) as listener:
        client = await dc.connect(listener.contact_address)
        other = await dc.connect(listener.contact_address)
        server, server_other = await accepted.get(), await accepted.get()
        reading = asyncio.create_task(client.read())
        await asyncio.sleep(0.05)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        # where the stream stood is unknown to the caller: the comm is closed
        assert client.closed()
        with pytest.raises(dc.CommClosedError):
            await asyncio.wait_for(server.read(), 5)
        # the other comm is untouched
        await other.write({"op": "fine"})
        assert await asyncio.wait_for(server_other.read(), 5) == {"op": "fine"}
        await other.close()
        await server_other.close()
    await leaks.assert_none()


async def test_cancelling_an_offloaded_write_keeps_the_stream_in_step(no_pending_task_warnings):
    """A large write is cancelled while its frames are still being made (on the
    offload thread): nothing was queued, so the comm carries the next message whole."""
    accepted: asyncio.Queue = asyncio.Queue()
    async with dc.listen("tcp://127.0.0.1:0", accepted.put) as listener:
        client = await dc.connect(listener.contact_address)
        server = await accepted.get()
        big = [np.arange(16 * MiB // 8, dtype="f8") for _ in range(4)]  # 64 MiB, offloaded
        writing = asyncio.create_task(client.write({"x": to_serialize(big), "op": "big"}))
        await asyncio.sleep(0)  # started: now in dumps on the offload thread
        writing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writing
        assert not client.closed()
        await client.write({"op": "after"})
        assert await asyncio.wait_for(server.read(), 10) == {"op": "after"}
        await client.close()


async def write_until_closed(comm, block, written: list) -> str:
    """Write numbered 1 MiB messages until the comm is closed under us."""
    try:
        for i in range(100_000):
            await comm.write({"i": i, "x": to_serialize(block * i)})
            written.append(i)
            await asyncio.sleep(0)
    except dc.CommClosedError:
        return "closed"
    return "finished"


async def read_until_closed(comm, block) -> list:
    """Read (and check) numbered messages until the comm closes."""
    received = []
    try:
        while True:
            msg = await asyncio.wait_for(comm.read(), 10)
            np.testing.assert_array_equal(msg["x"], block * msg["i"])
            received.append(msg["i"])
    except dc.CommClosedError:
        return received


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_closing_a_comm_while_another_task_writes(how, no_pending_task_warnings):
    """Whatever the writer had finished arrives whole and in order (all of it
    after ``close``, which flushes); then both ends see the close."""
    leaks = Leaks()
    accepted: asyncio.Queue = asyncio.Queue()
    async with dc.listen("tcp://127.0.0.1:0", accepted.put) as listener:
        client = await dc.connect(listener.contact_address)
        server = await accepted.get()
        block = np.arange(MiB // 8, dtype="f8")
        written: list = []
        reader = asyncio.create_task(read_until_closed(server, block))
        writer = asyncio.create_task(write_until_closed(client, block, written))
        await asyncio.sleep(0.3)
        if how == "close":
            await asyncio.wait_for(client.close(), 10)
        else:
            client.abort()
        assert await asyncio.wait_for(writer, 10) == "closed"
        received = await asyncio.wait_for(reader, 20)
        assert written, "the writer should have got going"
        assert received == list(range(len(received)))
        assert len(received) <= len(written)
        if how == "close":
            assert received == written
    await leaks.assert_none()


LOOP_SHUTDOWN = r"""
import asyncio, gc, logging, sys, warnings
import psutil
import distributed_comm as dc

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
warnings.simplefilter("always")
fds = psutil.Process().num_fds()

async def main():
    accepted = []
    listener = await dc.listen("tcp://127.0.0.1:0", accepted.append)
    comms = [await dc.connect(listener.contact_address) for _ in range(20)]
    for c in comms[:10]:
        await c.write({"x": b"y" * 2**20})
    pending = [asyncio.create_task(c.read()) for c in comms]
    server_reads = [asyncio.create_task(c.read()) for c in accepted]
    await asyncio.sleep(0.1)
    # Return with 40 comms and 40 reads still open. (A listener left running
    # keeps its socket until Tornado forgets the closed loop: stop it.)
    listener.stop()

asyncio.run(main())
gc.collect()
print("fds", psutil.Process().num_fds() - fds, flush=True)
"""


def test_event_loop_shutdown_with_open_comms():
    out = subprocess.run(
        [sys.executable, "-X", "dev", "-c", LOOP_SHUTDOWN],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert out.returncode == 0, out.stderr
    assert "Task was destroyed but it is pending" not in out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert "Exception ignored" not in out.stderr, out.stderr
    leaked = int(out.stdout.split()[-1])
    assert leaked <= 0, f"{leaked} fds left open after the loop closed\n{out.stderr}"
