"""protocol.loads_work / dumps_work: the bytes (de)serializing a message reads
or copies, by which a comm decides what goes to its offload thread."""

from __future__ import annotations

import subprocess
import sys

import msgpack
import pytest
from test_buffers import BYTES_BACKED, received

from distributed_comm import protocol
from distributed_comm.protocol import ToPickle, dumps_work, loads_work, to_serialize
from distributed_comm.protocol.serialize import OBJECT_WORK, builds_in_place

numpy = pytest.importorskip("numpy")

MiB = 2**20
SIZE = 4 * MiB
HEADERS = 2048  # more than the body and sub-headers of these messages take
CHEAP = OBJECT_WORK + HEADERS  # one payload sent or received as it is


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
    assert dumps_work(msg) < CHEAP or walked
    # with compression agreed, any large frame may be compressed: all of it counts
    assert dumps_work(msg, context={"compression": "lz4"}) >= SIZE


def test_dumps_work_counts_what_msgpack_or_pickle_copies():
    array = numpy.ones(SIZE, "u1")
    assert dumps_work({"x": b"x" * SIZE}) >= SIZE  # inline in the msgpack body
    assert dumps_work({"x": ToPickle(array)}) >= SIZE
    assert dumps_work({"x": [to_serialize(array)] * 3}) < 3 * CHEAP
    assert dumps_work({"op": "ping"}) < HEADERS


@pytest.mark.parametrize("serializers", [["pickle"], ("msgpack", "dask"), []])
def test_dumps_work_counts_payloads_another_family_serializes(serializers):
    msg = {"x": to_serialize(b"x" * SIZE)}
    assert dumps_work(msg, serializers=serializers) >= SIZE
    assert dumps_work(msg, serializers=("dask", "pickle")) < CHEAP


def test_dumps_work_counts_items_beyond_its_sample_by_size():
    """It looks at 8 items of a container: those it did not see are not
    assumed to be sent as they are because those it saw were."""
    arrays = [to_serialize(numpy.ones(2**17)) for _ in range(16)]  # 1 MiB each
    assert dumps_work({"data": dict(enumerate(arrays))}) >= 8 * MiB
    assert dumps_work({"data": arrays}) >= 8 * MiB
    assert dumps_work({"data": arrays[:8]}) < 8 * CHEAP


def test_many_small_payloads_are_work():
    """Each out-of-band object costs microseconds, whatever its size."""
    arrays = {("x", i): to_serialize(numpy.ones(16)) for i in range(40)}
    msg = {"op": "get_data", "data": arrays}
    assert dumps_work(msg) >= 40 * OBJECT_WORK
    frames = received(msg)
    assert loads_work(frames) >= 40 * OBJECT_WORK
    # with a limit, the walk stops as soon as the work is over it
    assert 10 * OBJECT_WORK < loads_work(frames, limit=10 * OBJECT_WORK) <= 12 * OBJECT_WORK


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
    assert loads_work(frames) > total(frames) if walked else loads_work(frames) < CHEAP
    protocol.loads(frames)  # and they do decode


def test_loads_work_counts_inline_and_pickled_payloads():
    array = numpy.ones(SIZE, "u1")
    for msg in ({"x": b"x" * SIZE}, {"x": ToPickle(array)}, {"x": [array]}):
        frames = received(msg)
        assert loads_work(frames) >= total(frames) > SIZE


def test_loads_work_adds_up_several_payloads():
    msg = {"a": to_serialize(numpy.ones(SIZE, "u1")), "b": to_serialize(bytearray(SIZE))}
    frames = received(msg)
    assert SIZE <= loads_work(frames) < SIZE + 2 * CHEAP


def test_shards_side_by_side_are_free_apart_they_are_copied():
    frames = received({"x": to_serialize(numpy.ones(SIZE, "u1"))}, shard=MiB)
    assert len(frames) == 6 and loads_work(frames) < CHEAP
    apart = [*frames[:2], *(bytearray(frame) for frame in frames[2:])]
    assert loads_work(apart) > total(apart)
    assert (protocol.loads(apart)["x"] == 1).all()


def test_compressed_frames_count():
    frames = protocol.dumps(
        {"x": to_serialize(numpy.zeros(SIZE, "u1"))}, context={"compression": "zlib"}
    )
    assert loads_work(frames) > total(frames)


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


def test_a_sub_header_hidden_inside_another_objects_frames_is_refused():
    """loads and loads_work see the same objects: a body that points into an
    object's frames (where a header says "bytes, as is") cannot get a
    msgpack payload decoded behind loads_work's back."""
    cover = msgpack.packb({"serializer": "dask", "type": "bytes", "num-sub-frames": 3})
    inner = msgpack.packb({"serializer": "msgpack", "num-sub-frames": 1})
    frames = [msgpack.packb({"x": {"__Serialized__": 2}}), cover, inner, b"\x90", b"x" * SIZE]
    with pytest.raises(ValueError, match="frame 2, which holds no sub-header"):
        protocol.loads(frames)
    assert loads_work(frames) > total(frames)


def test_a_collection_header_is_not_taken_for_its_type():
    header = {
        "serializer": "dask",
        "type": "bytes",
        "is-collection": True,
        "sub-headers": [{"serializer": "msgpack"}],
        "frame-lengths": [1],
        "type-serialized": "list",
    }
    assert not builds_in_place(header, [b"x" * SIZE])


def test_a_peers_type_name_imports_nothing():
    """A type not registered yet (numpy's, made on first use) counts as work:
    a peer's header never makes the receiver import a module."""
    code = (
        "import sys\n"
        "from distributed_comm.protocol.serialize import builds_in_place\n"
        "header = {'serializer': 'dask', 'type': 'numpy.ndarray', 'sub-header': {}}\n"
        "assert not builds_in_place(header, [bytearray(8)])\n"
        "assert 'numpy' not in sys.modules, 'numpy was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_messages_from_stock_distributed_are_judged_alike():
    """What a stock distributed worker sends us (its own dumps, received off
    the byte stream; no compression, as between comms on one host) stays on
    the loop where ours would, and its pickles do not."""
    theirs = pytest.importorskip("distributed.protocol")

    def their_dumps(msg, **kwargs):
        return theirs.dumps(msg, context={"compression": None}, **kwargs)

    array, data = numpy.ones(SIZE, "u1"), b"x" * SIZE
    msg = {
        "op": "get_data",
        "data": {"a": theirs.to_serialize(array), "b": theirs.to_serialize(data)},
    }
    frames = received(msg, dumps=their_dumps)
    assert loads_work(frames) < 2 * CHEAP
    assert (protocol.loads(frames)["data"]["a"] == 1).all()
    frames = received({"x": theirs.to_serialize(array)}, shard=MiB, dumps=their_dumps)
    assert len(frames) == 6 and loads_work(frames) < CHEAP
    for walked in ({"x": theirs.to_serialize(bytearray(SIZE))}, {"x": [array]}):
        frames = received(walked, dumps=their_dumps)
        assert loads_work(frames) > total(frames) > SIZE
