"""buffers: fresh receive buffers, and bytes payloads out of them without a copy."""

from __future__ import annotations

import gc
import sys

import pytest

from distributed_comm import buffers, frames, protocol
from distributed_comm.frames import Decoder, Limits
from distributed_comm.protocol import to_serialize

numpy = pytest.importorskip("numpy")

LARGE = buffers.SMALL_BUFFER + 1
# Where a large buffer is a bytes object's storage (CPython with numpy).
BYTES_BACKED = sys.implementation.name == "cpython"


def address(buffer) -> int:
    return numpy.frombuffer(buffer, "u1").ctypes.data


def received(msg, shard: int = 2**30, dumps=protocol.dumps) -> list[memoryview]:
    """The frames a reader gets for *msg* (written by *dumps*) off the byte stream."""
    parts, _ = frames.encode(dumps(msg, frame_split_size=shard))
    decoder = Decoder(Limits(max_frames=100, max_message_size=2**30))
    for part in parts:
        decoder.feed(part)
    return decoder.pop()[0]


def received_frames(payload, shard: int = 2**30) -> list[memoryview]:
    """The frames a reader gets for ``{"x": to_serialize(payload)}``."""
    return received({"x": to_serialize(payload)}, shard)


@pytest.mark.parametrize("size", [0, 10, LARGE, 2**20])
def test_empty_buffer_is_writeable_and_owns_its_memory(size):
    buffer = buffers.empty_buffer(size)
    assert buffer.nbytes == size and not buffer.readonly and buffer.format == "B"
    other = buffers.empty_buffer(size)
    if size:
        buffer[0] = 1
        other[0] = 2
        assert buffer[0] == 1


@pytest.mark.skipif(not BYTES_BACKED, reason="bytes-backed buffers need CPython")
def test_a_filled_large_buffer_is_handed_out_as_bytes_without_a_copy():
    buffer = buffers.empty_buffer(2**20)
    buffer[:] = bytes(range(256)) * 4096
    payload = buffers.bytes_of(buffer)
    assert type(payload) is bytes and payload == bytes(range(256)) * 4096
    assert address(payload) == address(buffer)
    # the bytes object outlives the buffer and every view of it
    del buffer
    gc.collect()
    assert payload[:3] == b"\x00\x01\x02" and hash(payload) == hash(bytes(payload))


def test_only_a_whole_large_received_buffer_is_bytes():
    buffer = buffers.empty_buffer(2**20)
    assert buffers.bytes_of(buffer[1:]) is None
    assert buffers.bytes_of(buffer[:-1]) is None
    assert buffers.bytes_of(buffers.empty_buffer(10)) is None  # small: a bytearray
    assert buffers.bytes_of(memoryview(bytearray(2**20))) is None
    assert buffers.bytes_of(memoryview(numpy.empty(2**20, "u1"))) is None
    assert buffers.bytes_of(memoryview(bytes(2**20))) is None
    assert buffers.bytes_of(b"x" * 2**20) is None


@pytest.mark.skipif(not BYTES_BACKED, reason="bytes-backed buffers need CPython")
@pytest.mark.parametrize("shard", [2**20, 2**30])
def test_a_received_bytes_payload_is_the_receive_buffer(shard):
    """The payload, sharded or not, lands in one buffer that loads hands out as is."""
    payload = bytes(range(256)) * (3 * 2**12)  # 3 MiB
    received = received_frames(payload, shard)
    got = protocol.loads(received)["x"]
    assert type(got) is bytes and got == payload
    large = [frame for frame in received if frame.nbytes > buffers.SMALL_BUFFER]
    assert address(got) == address(large[0])  # no copy


def test_numpy_arrays_on_received_shards_stay_writeable_views():
    array = numpy.arange(3 * 2**18, dtype="<i4")  # 3 MiB
    received = received_frames(array, shard=2**20)
    got = protocol.loads(received)["x"]
    assert (got == array).all() and got.flags.writeable and got.flags.aligned
    large = [frame for frame in received if frame.nbytes > buffers.SMALL_BUFFER]
    assert len(large) == 3 and got.ctypes.data == address(large[0])  # shards rejoined in place


@pytest.mark.skipif(not BYTES_BACKED, reason="bytes-backed buffers need CPython")
def test_frames_kept_by_the_caller_never_become_a_bytes_payload():
    """deserialize=False: the Serialized frames stay with the caller, so a later
    deserialize copies the bytes payload rather than share memory with them."""
    payload = bytes(range(256)) * 4096
    kept = protocol.loads(received_frames(payload), deserialize=False)["x"]
    got = protocol.deserialize(kept.header, kept.frames)
    assert got == payload
    kept.frames[0][:4] = b"XXXX"  # the caller may write to its frames...
    assert got == payload  # ...without touching the payload it was given
    assert not kept.frames[0].readonly
    # numpy payloads kept this way still deserialize onto the frame, writeable
    array = numpy.arange(2**17, dtype="<f8")
    kept = protocol.loads(received_frames(array), deserialize=False)["x"]
    got = protocol.deserialize(kept.header, kept.frames)
    assert got.flags.writeable and got.ctypes.data == address(kept.frames[0])
