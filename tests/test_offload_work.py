"""protocol.loads_work / dumps_work: the bytes (de)serializing a message reads
or copies, by which a comm decides what goes to its offload thread."""

from __future__ import annotations

import msgpack
import pytest
from test_buffers import BYTES_BACKED, received

from distributed_comm import protocol
from distributed_comm.protocol import ToPickle, dumps_work, loads_work, to_serialize

numpy = pytest.importorskip("numpy")

MiB = 2**20
SIZE = 4 * MiB
HEADERS = 2048  # more than the body and sub-headers of these messages take


def total(frames) -> int:
    return sum(memoryview(frame).nbytes for frame in frames)


# payload -> whether serializing it reads or copies it (not compressed)
SENT = {
    "C array": (lambda: numpy.ones(SIZE, "u1"), False),
    "Fortran array": (lambda: numpy.ones((SIZE // 64, 64), "u1", order="F"), False),
    "bytes": (lambda: b"x" * SIZE, False),
    "bytearray": (lambda: bytearray(SIZE), False),
    "memoryview": (lambda: memoryview(b"x" * SIZE), False),
    "strided array": (lambda: numpy.ones(2 * SIZE, "u1")[::2], True),
    "object array": (lambda: numpy.arange(SIZE // 8).astype(object), True),
}


@pytest.mark.parametrize("case", SENT)
def test_dumps_work_counts_payloads_serializing_reads(case):
    make, walked = SENT[case]
    msg = {"op": "put", "x": to_serialize(make())}
    assert (dumps_work(msg) >= SIZE) is walked
    assert dumps_work(msg) < HEADERS or walked
    # with compression agreed, any large frame may be compressed: all of it counts
    assert dumps_work(msg, {"compression": "lz4"}) >= SIZE


def test_dumps_work_counts_what_msgpack_or_pickle_copies():
    array = numpy.ones(SIZE, "u1")
    assert dumps_work({"x": b"x" * SIZE}) >= SIZE  # inline in the msgpack body
    assert dumps_work({"x": ToPickle(array)}) >= SIZE
    assert dumps_work({"x": [to_serialize(array)] * 3}) < HEADERS
    assert dumps_work({"op": "ping"}) < HEADERS


# payload -> whether deserializing its received frames reads or copies them
RECEIVED = {
    "array": (lambda: numpy.ones(SIZE, "u1"), False),
    "matrix": (lambda: numpy.asmatrix(numpy.ones((SIZE // 64, 64), "u1")), False),
    "bytes": (lambda: b"x" * SIZE, not BYTES_BACKED),
    "memoryview": (lambda: memoryview(b"x" * SIZE), False),
    "bytearray": (lambda: bytearray(SIZE), True),
    "object array": (lambda: numpy.array([b"x" * SIZE, None], dtype=object), True),
}


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # numpy.matrix
@pytest.mark.parametrize("case", RECEIVED)
def test_loads_work_counts_frames_deserializing_reads(case):
    make, walked = RECEIVED[case]
    frames = received({"op": "put", "x": to_serialize(make())})
    assert total(frames) > SIZE
    assert loads_work(frames) == total(frames) if walked else loads_work(frames) < HEADERS
    protocol.loads(frames)  # and they do decode


def test_loads_work_counts_inline_and_pickled_payloads():
    array = numpy.ones(SIZE, "u1")
    for msg in ({"x": b"x" * SIZE}, {"x": ToPickle(array)}, {"x": [array]}):
        frames = received(msg)
        assert loads_work(frames) == total(frames) > SIZE


def test_loads_work_adds_up_several_payloads():
    msg = {"a": to_serialize(numpy.ones(SIZE, "u1")), "b": to_serialize(bytearray(SIZE))}
    frames = received(msg)
    assert SIZE <= loads_work(frames) < SIZE + HEADERS


def test_shards_side_by_side_are_free_apart_they_are_copied():
    frames = received({"x": to_serialize(numpy.ones(SIZE, "u1"))}, shard=MiB)
    assert len(frames) == 6 and loads_work(frames) < HEADERS
    apart = [*frames[:2], *(bytearray(frame) for frame in frames[2:])]
    assert loads_work(apart) == total(apart)
    assert (protocol.loads(apart)["x"] == 1).all()


def test_compressed_frames_count():
    frames = protocol.dumps(
        {"x": to_serialize(numpy.zeros(SIZE, "u1"))}, context={"compression": "zlib"}
    )
    assert loads_work(frames) == total(frames)


@pytest.mark.parametrize(
    "frames",
    [
        [b"\x81\xa1x\x81\xae__Serialized__\x01", b"not msgpack", b"x" * SIZE],
        [b"\x80", b"\x81\xaenum-sub-frames\x05", b"x" * SIZE],  # more frames than there are
        # an array behind a sub-header too large to read on the loop (an in-band pickle's size)
        [
            b"\x80",
            msgpack.packb(
                {
                    "serializer": "dask",
                    "type": "numpy.ndarray",
                    "sub-header": {"writeable": [False]},
                    "num-sub-frames": 1,
                    "pickled-obj": b"x" * MiB,
                }
            ),
            b"x" * SIZE,
        ],
    ],
)
def test_frames_it_cannot_read_all_count(frames):
    assert loads_work(frames) == total(frames)
