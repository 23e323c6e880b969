"""Compressed frames cannot expand past the message-size limit: a few kilobytes
from a peer must not make this process allocate gigabytes."""

from __future__ import annotations

import asyncio
import tracemalloc
import zlib

import lz4.block
import pytest

import distributed_comm as dc
from distributed_comm import config, protocol
from distributed_comm.protocol import compression, to_serialize

MiB = 2**20


def peak_allocation(func) -> int:
    tracemalloc.start()
    try:
        func()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_lz4_size_prefix_is_checked_before_allocating():
    bomb = (2**32 - 1).to_bytes(4, "little") + b"\x00" * 16  # claims 4 GiB

    def refuse():
        with pytest.raises(ValueError, match="lz4 frame expands to 4294967295 bytes"):
            compression.decompress(["lz4"], [bomb], limit=MiB)

    assert peak_allocation(refuse) < MiB


def test_zlib_output_is_capped_while_decompressing():
    bomb = zlib.compress(bytes(256 * MiB), 9)
    assert len(bomb) < MiB // 2

    def refuse():
        with pytest.raises(ValueError, match="zlib frame expands to more than"):
            compression.decompress(["zlib"], [bomb], limit=MiB)

    assert peak_allocation(refuse) < 3 * MiB


def test_limit_is_shared_by_the_frames_of_one_object():
    half = lz4.block.compress(bytes(600_000))
    assert len(compression.decompress(["lz4"], [half], limit=MiB)) == 1
    with pytest.raises(ValueError, match="over the 448576-byte limit"):
        compression.decompress(["lz4", "lz4"], [half, half], limit=MiB)


@pytest.mark.parametrize("broken", [b"", b"\x01\x02", zlib.compress(b"x" * 1000)[:-5]])
def test_short_or_truncated_frames_are_value_errors(broken):
    with pytest.raises(ValueError):
        compression.decompress(["zlib" if len(broken) > 3 else "lz4"], [broken], limit=MiB)


def test_honest_compressed_messages_still_load():
    payload = bytes(8 * MiB)
    frames = protocol.dumps({"x": to_serialize(payload)}, context={"compression": "lz4"})
    assert sum(len(memoryview(f).cast("B")) for f in frames) < MiB
    assert protocol.loads(frames) == {"x": payload}


async def test_bomb_over_a_socket_is_refused_and_the_comm_survives():
    """The receiver's limit is 4 MiB; a 64 MiB lz4 bomb arrives in ~260 kB."""
    results: asyncio.Queue = asyncio.Queue()

    async def handler(comm):
        for _ in range(2):
            try:
                results.put_nowait(await comm.read())
            except ValueError as exc:
                results.put_nowait(exc)

    with config.set({"distributed.comm.max-message-size": "4MiB"}):
        async with dc.listen("tcp://127.0.0.1:0", handler) as listener:
            client = await dc.connect(listener.contact_address, timeout=5)
            client.handshake_options["compression"] = "lz4"  # as if negotiated
            written = await client.write({"x": to_serialize(bytes(64 * MiB))})
            assert written < MiB
            await client.write({"op": "after the bomb"})
            refused = await asyncio.wait_for(results.get(), 10)
            assert isinstance(refused, ValueError)
            assert "over the 4194304-byte limit" in str(refused)
            assert await asyncio.wait_for(results.get(), 10) == {"op": "after the bomb"}
            await client.close()
