"""Helpers for the hardening suite: raw sockets that speak (or break) the wire
format, TLS contexts, and checks that a listener still serves and stayed quiet."""

from __future__ import annotations

import asyncio
import logging
import struct

import distributed_comm as dc
from distributed_comm import frames, protocol

#: Loggers whose records the quietness checks look at.
LOGGERS = ("distributed_comm", "tornado", "asyncio")


def wire(msg_frames: list) -> bytes:
    """One message's bytes on a stream, as our writer puts them."""
    parts, _ = frames.encode(msg_frames)
    return b"".join(bytes(memoryview(p).cast("B")) for p in parts)


def raw_message(head: int, lengths: list[int], payload: bytes = b"") -> bytes:
    """A hand-made ``[H][N][len...]`` prelude (any values, lies included) and payload."""
    return struct.pack(f"<{len(lengths) + 2}Q", head, len(lengths), *lengths) + payload


def handshake_bytes() -> bytes:
    """A valid handshake message, as a peer of ours would send it."""
    info = {"compression": None, "python": (3, 11, 0), "pickle-protocol": 5}
    return wire(protocol.dumps(info))


async def read_message(reader: asyncio.StreamReader) -> bytes:
    """One whole message from a raw stream (bounded), returned as raw bytes."""
    head = await asyncio.wait_for(reader.readexactly(8), 5)
    return head + await asyncio.wait_for(reader.readexactly(frames.U64.unpack(head)[0]), 5)


async def hung_up(reader: asyncio.StreamReader, timeout: float = 5) -> None:
    """Wait (bounded) until the other end closes, cleanly or by reset."""
    try:
        while await asyncio.wait_for(reader.read(2**16), timeout):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass


async def echo(comm: dc.Comm) -> None:
    try:
        while True:
            await comm.write(await comm.read())
    except dc.CommClosedError:
        pass


async def assert_serves(listener, **connect_args) -> None:
    """A fresh comm to *listener* round-trips a message through an echo handler."""
    client = await dc.connect(listener.contact_address, timeout=5, **connect_args)
    try:
        await client.write({"op": "still serving"})
        assert await asyncio.wait_for(client.read(), 5) == {"op": "still serving"}
    finally:
        await client.close()


def assert_quiet(caplog, dropped: int) -> None:
    """No ERROR records, no tracebacks, at most one line per dropped peer."""
    records = [r for r in caplog.records if r.name.split(".")[0] in LOGGERS]
    assert not [r for r in records if r.levelno >= logging.ERROR], caplog.text
    assert not [r for r in records if r.exc_info], caplog.text
    noisy = [r for r in records if r.levelno >= logging.INFO]
    assert len(noisy) <= dropped, caplog.text
    assert all("\n" not in r.getMessage() for r in noisy), caplog.text
