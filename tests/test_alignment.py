"""Received numpy arrays are aligned, whichever side wrote them (regressions).

Real sockets on loopback; stock ``distributed`` is the oracle.
"""

from __future__ import annotations

import asyncio

import pytest

import distributed_comm as dc
from distributed_comm.protocol import to_serialize

numpy = pytest.importorskip("numpy")
theirs = pytest.importorskip("distributed.comm")
their_protocol = pytest.importorskip("distributed.protocol")

# A 32..64 KiB array travels in the head (frames.head_count keeps frames up to
# HEAD_FRAME_MAX there). The large array after it used to join it there too and
# land in one region behind it, unaligned, in our reader and in stock's.
MEDIUM_LENGTHS = range(4096, 8192, 331)  # float64 items: 32..64 KiB


def get_data_response(serialize, medium: int) -> dict:
    """The shape of a worker's ``get_data`` reply: a small chunk, then a large one."""
    rng = numpy.random.default_rng(medium)
    return {
        "status": "OK",
        "data": {"small": serialize(rng.random(medium)), "large": serialize(rng.random(10**6))},
    }


async def large_arrays_received(listen_module, connect_module, serialize) -> list:
    accepted: asyncio.Queue = asyncio.Queue()
    listener = await listen_module.listen("tcp://127.0.0.1:0", accepted.put)
    try:
        client = await connect_module.connect(listener.contact_address)
        server_side = await asyncio.wait_for(accepted.get(), 10)
        received = []
        for medium in MEDIUM_LENGTHS:
            await client.write(get_data_response(serialize, medium))
            msg = await asyncio.wait_for(server_side.read(), 30)
            received.append(msg["data"]["large"])
        await client.close()
        await server_side.close()
        return received
    finally:
        listener.stop()


async def test_a_large_array_after_a_medium_one_arrives_aligned():
    """Ours -> ours: the large float64 array of a message whose first array is
    32..64 KiB arrived unaligned (numpy ops on it about 2x slower)."""
    stock = await large_arrays_received(theirs, theirs, their_protocol.to_serialize)
    assert all(x.flags.aligned for x in stock)  # the oracle
    got = await large_arrays_received(dc, dc, to_serialize)
    misaligned = [x.ctypes.data % 64 for x in got if not x.flags.aligned]
    assert not misaligned, f"{len(misaligned)} of {len(got)} unaligned (address % 64: {misaligned})"


async def test_our_writer_gives_a_stock_reader_aligned_arrays():
    """Our writer put the large array in the head behind the medium one, so a
    stock reader, which reads the head into one buffer, built it unaligned. A
    stock writer sends it apart, and so do we now."""
    stock = await large_arrays_received(theirs, theirs, their_protocol.to_serialize)
    assert all(x.flags.aligned for x in stock)  # the oracle
    got = await large_arrays_received(theirs, dc, to_serialize)
    misaligned = [x.ctypes.data % 64 for x in got if not x.flags.aligned]
    assert not misaligned, f"{len(misaligned)} of {len(got)} unaligned (address % 64: {misaligned})"
