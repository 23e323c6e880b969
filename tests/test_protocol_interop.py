"""Cross-implementation tests: our dumps/loads against distributed.protocol, both ways.

Every case builds the same message with each side's marker classes, encodes it
with one implementation, moves the frames into fresh writeable buffers (as a
socket reader would) and decodes them with the other.
"""

from __future__ import annotations

import array
import functools
import types
import uuid

import msgpack
import numpy as np
import pytest

import distributed_comm.protocol as ours
from distributed_comm import config

dask = pytest.importorskip("dask")
theirs = pytest.importorskip("distributed.protocol")

MiB = 2**20


class Point:
    """A plain class msgpack cannot encode: it must fall back to pickle."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (other.x, other.y) == (self.x, self.y)


def to_wire(frames: list) -> list:
    """Each frame copied into its own writeable buffer, as a TCP reader delivers them."""
    out = []
    for frame in frames:
        view = memoryview(frame).cast("B")
        buffer = np.empty(view.nbytes, dtype="u1")
        buffer[:] = view
        out.append(buffer.data)
    return out


def assert_same(got: object, expected: object, path: str = "msg") -> None:
    if expected is np.ma.masked:
        assert got is np.ma.masked, path
    elif isinstance(expected, np.ma.MaskedArray):
        assert type(got) is type(expected), path
        np.testing.assert_array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(expected))
        np.testing.assert_array_equal(got.data, expected.data, err_msg=path)
        assert got.fill_value == expected.fill_value, path
    elif isinstance(expected, np.ndarray):
        assert type(got) is type(expected), path
        assert got.dtype == expected.dtype, path
        assert got.shape == expected.shape, path
        assert got.flags.writeable == expected.flags.writeable, path
        if expected.flags.f_contiguous and not expected.flags.c_contiguous:
            assert got.flags.f_contiguous, path
        if expected.dtype.hasobject:
            assert got.tolist() == expected.tolist(), path
        else:
            np.testing.assert_array_equal(got, expected, err_msg=path)
    elif isinstance(expected, types.FunctionType):
        assert callable(got), path
        assert got(3) == expected(3), path
    elif isinstance(expected, dict):
        assert type(got) is dict and got.keys() == expected.keys(), path
        for key in expected:
            assert_same(got[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(got) is type(expected) and len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert_same(g, e, f"{path}[{i}]")
    elif isinstance(expected, memoryview):
        assert isinstance(got, memoryview), path
        assert (got.format, got.shape) == (expected.format, expected.shape), path
        assert got.tobytes() == expected.tobytes(), path
    else:
        assert type(got) is type(expected), f"{path}: {type(got)} != {type(expected)}"
        assert got == expected, path


rng = np.random.default_rng(42)
arange = np.arange(24, dtype="i8").reshape(4, 6)
readonly = np.arange(10.0)
readonly.flags.writeable = False
structured = np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i4"), ("b", "<f8")])
aligned = np.zeros(3, dtype=np.dtype([("a", "u1"), ("b", "<i8")], align=True))
masked = np.ma.masked_array(np.arange(5.0), mask=[0, 1, 0, 0, 1], fill_value=-1.5)
masked_strings = np.ma.masked_array(np.array(["a", "b"]), fill_value="zz")
objects = np.array([1, "two", None, (3,)], dtype=object)
random_80mb = rng.integers(0, 2**63, size=80 * MiB // 8, dtype="i8")  # incompressible
zeros_1mb = np.zeros(MiB // 8)
big_bytes = b"0123456789abcdef" * (100 * MiB // 16)
int_matrix = memoryview(array.array("i", range(6))).cast("B").cast("i", (2, 3))
add_one = lambda x: x + 1  # noqa: E731 - a lambda is the point: plain pickle refuses it


def square(x: int) -> int:
    return x * x


ARRAYS = {
    "int8": np.arange(-5, 5, dtype="i1"),
    "uint16": np.arange(7, dtype="u2"),
    "int32-big-endian": np.arange(6, dtype=">i4"),
    "int64": arange,
    "float16": np.linspace(0, 1, 9, dtype="f2"),
    "float32": rng.random(13, dtype="f4"),
    "float64": rng.random((3, 5)),
    "longdouble": np.arange(4, dtype=np.longdouble),
    "complex128": np.arange(5) * (1 + 2j),
    "bool": np.array([True, False, True]),
    "unicode": np.array(["a", "bcd", "ef"]),
    "bytes": np.array([b"a", b"xyz"]),
    "datetime64": np.array(["2024-01-01T00:00:00.5", "NaT"], dtype="M8[ns]"),
    "timedelta64": np.array([1, 2, 3], dtype="m8[s]"),
    "structured": structured,
    "structured-aligned": aligned,
    "object": objects,
    "fortran-order": np.asfortranarray(rng.random((5, 7))),
    "non-contiguous": arange[::2, 1::3],
    "negative-strides": arange[::-1],
    "zero-d": np.array(3.5),
    "empty": np.empty((0, 3)),
    "broadcast": np.broadcast_to(np.arange(5.0), (4, 5)),
    "broadcast-middle": np.broadcast_to(np.arange(6.0).reshape(2, 1, 3)[:, :, ::2], (2, 4, 2)),
    "readonly": readonly,
}


def case(make, expected, dumps_kwargs=None):
    return (make, expected, dumps_kwargs or {})


CASES = {
    "ping": case(lambda m: {"op": "ping"}, {"op": "ping"}),
    "plain-values": case(
        lambda m: {"op": "x", "v": [1, -2, 2**63, 1.5, None, True, "é", b"\x00\xff", (1, [2])]},
        {"op": "x", "v": (1, -2, 2**63, 1.5, None, True, "é", b"\x00\xff", (1, (2,)))},
    ),
    "int-keys": case(lambda m: {1: "a", 2: {3: b"b"}}, {1: "a", 2: {3: b"b"}}),
    "set": case(lambda m: {"s": {1, 2, "x"}}, {"s": {1, 2, "x"}}),
    "enum": case(lambda m: {"e": uuid.SafeUUID.safe}, {"e": uuid.SafeUUID.safe}),
    "bytes": case(lambda m: {"d": m.to_serialize(b"abc" * 100)}, {"d": b"abc" * 100}),
    "bytearray": case(lambda m: {"d": m.to_serialize(bytearray(b"xy"))}, {"d": bytearray(b"xy")}),
    "memoryview": case(lambda m: {"d": m.to_serialize(int_matrix)}, {"d": int_matrix}),
    "array.array": case(
        lambda m: {"d": m.to_serialize(array.array("d", [1.0, 2.5]))},
        {"d": array.array("d", [1.0, 2.5])},
    ),
    **{
        f"numpy-{name}": case(lambda m, a=a: {"x": m.to_serialize(a)}, {"x": a})
        for name, a in ARRAYS.items()
    },
    "numpy-matrix": case(
        lambda m: {"x": m.to_serialize(np.asmatrix(arange))}, {"x": np.asmatrix(arange)}
    ),
    "numpy-masked": case(
        lambda m: {"x": m.to_serialize(masked), "c": m.to_serialize(np.ma.masked)},
        {"x": masked, "c": np.ma.masked},
    ),
    "numpy-masked-nomask-object-fill": case(
        lambda m: {"x": m.to_serialize(masked_strings)}, {"x": masked_strings}
    ),
    "bytes-100MB": case(lambda m: {"big": m.to_serialize(big_bytes)}, {"big": big_bytes}),
    "split-80MB-array": case(lambda m: {"x": m.to_serialize(random_80mb)}, {"x": random_80mb}),
    "split-small-shards": case(
        lambda m: {"x": m.to_serialize(random_80mb[: MiB // 2])},
        {"x": random_80mb[: MiB // 2]},
        {"frame_split_size": 100_000},
    ),
    "lz4": case(
        lambda m: {"x": m.to_serialize(zeros_1mb), "p": m.ToPickle(zeros_1mb)},
        {"x": zeros_1mb, "p": zeros_1mb},
        {"context": {"compression": "lz4"}},
    ),
    "zlib": case(
        lambda m: {"x": m.to_serialize(zeros_1mb)},
        {"x": zeros_1mb},
        {"context": {"compression": "zlib"}},
    ),
    "topickle-lambda": case(lambda m: {"f": m.ToPickle(add_one)}, {"f": add_one}),
    "topickle-function": case(lambda m: {"f": m.ToPickle(square)}, {"f": square}),
    "topickle-array": case(lambda m: {"a": m.ToPickle(arange)}, {"a": arange}),
    "pickle-fallback": case(lambda m: {"pt": Point(1, 2)}, {"pt": Point(1, 2)}),
    "serialize-custom-class": case(
        lambda m: {"pt": m.to_serialize(Point(3, 4))}, {"pt": Point(3, 4)}
    ),
    "collection-list": case(
        lambda m: {"c": m.to_serialize([arange, ARRAYS["float32"]])},
        {"c": [arange, ARRAYS["float32"]]},
    ),
    "collection-tuple": case(
        lambda m: {"c": m.to_serialize((b"a", arange))}, {"c": (b"a", arange)}
    ),
    "collection-dict": case(
        lambda m: {"c": m.to_serialize({"a": arange, "b": b"xyz", 3: ARRAYS["bool"]})},
        {"c": {"a": arange, "b": b"xyz", 3: ARRAYS["bool"]}},
    ),
    "collection-set": case(lambda m: {"c": m.to_serialize({b"a", b"b"})}, {"c": {b"a", b"b"}}),
    "family-pickle": case(
        lambda m: {"x": m.to_serialize(arange)}, {"x": arange}, {"serializers": ["pickle"]}
    ),
    "family-msgpack": case(
        lambda m: {"x": m.to_serialize({"k": [1, 2]})},
        {"x": {"k": [1, 2]}},  # iterated as collections: the list survives
        {"serializers": ["msgpack"]},
    ),
    "pickle-protocol-4": case(
        lambda m: {"x": m.to_serialize(Point(5, 6)), "a": m.ToPickle(arange)},
        {"x": Point(5, 6), "a": arange},
        {"context": {"pickle-protocol": 4}},
    ),
    "several-payloads": case(
        lambda m: {
            "op": "update",
            "tasks": [{"key": f"k{i}", "data": m.to_serialize(np.full(3, i))} for i in range(5)],
        },
        {
            "op": "update",
            "tasks": tuple({"key": f"k{i}", "data": np.full(3, i)} for i in range(5)),
        },
    ),
}


@pytest.fixture(autouse=True, scope="module")
def allow_uuid_enums():
    """Both sides only import Enum modules from an allow-list; add uuid to it."""
    allowed = ["dask", "distributed", "uuid"]
    with dask.config.set({"distributed.scheduler.allowed-imports": allowed}):
        with config.set({"distributed.scheduler.allowed-imports": allowed}):
            yield


def test_enough_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list(CASES))
def test_ours_to_theirs(name):
    make, expected, kwargs = CASES[name]
    frames = ours.dumps(make(ours), **kwargs)
    assert_same(theirs.loads(to_wire(frames)), expected)


@pytest.mark.parametrize("name", list(CASES))
def test_theirs_to_ours(name):
    make, expected, kwargs = CASES[name]
    frames = theirs.dumps(make(theirs), **kwargs)
    assert_same(ours.loads(to_wire(frames)), expected)


def test_big_frames_are_split_at_64mib():
    frames = ours.dumps({"x": ours.to_serialize(random_80mb)})
    sizes = [memoryview(f).nbytes for f in frames[2:]]
    assert sizes == [64 * MiB, 16 * MiB]
    header = msgpack.unpackb(frames[1])
    assert header["split-num-sub-frames"] == [2] and header["split-offsets"] == [0]


def test_lz4_frames_use_the_block_format():
    frames = ours.dumps({"x": ours.to_serialize(zeros_1mb)}, context={"compression": "lz4"})
    header = msgpack.unpackb(frames[1])
    assert header["compression"] == ["lz4"]
    import lz4.block

    assert lz4.block.decompress(frames[2]) == zeros_1mb.tobytes()


def test_error_family_both_ways():
    unencodable = {"x": ours.to_serialize(Point(1, 2))}
    frames = ours.dumps(unencodable, serializers=["msgpack"])
    with pytest.raises(TypeError, match="Could not serialize object of type Point"):
        theirs.loads(frames)
    frames = theirs.dumps({"x": theirs.to_serialize(Point(1, 2))}, serializers=["msgpack"])
    with pytest.raises(TypeError, match="Could not serialize object of type Point"):
        ours.loads(frames)


def test_forwarding_serialized_without_decoding():
    """A scheduler-like hop: loads(deserialize=False) then dumps again, across sides."""
    frames = theirs.dumps({"x": theirs.to_serialize(arange)}, context={"compression": "lz4"})
    hop = ours.loads(to_wire(frames), deserialize=False)
    assert isinstance(hop["x"], ours.Serialized)
    assert_same(theirs.loads(to_wire(ours.dumps(hop))), {"x": arange})

    frames = ours.dumps({"x": ours.to_serialize(random_80mb[:1000])})
    hop = theirs.loads(to_wire(frames), deserialize=False)
    assert_same(ours.loads(to_wire(theirs.dumps(hop))), {"x": random_80mb[:1000]})


def test_header_shapes_match_theirs():
    """Sub-headers name the same keys as distributed's for the same object."""
    for value in (arange, ARRAYS["broadcast"], b"abc", structured):
        our_header, _ = ours.serialize(value)
        their_header, _ = theirs.serialize(value)
        assert our_header.keys() == their_header.keys()
        assert our_header["sub-header"].keys() == their_header["sub-header"].keys()
        assert our_header["type"] == their_header["type"]


@functools.cache
def _zero_copy_array() -> np.ndarray:
    return np.arange(200 * MiB // 8, dtype="f8").reshape(-1, 1024)


def test_zero_copy_200mb_dumps():
    x = _zero_copy_array()
    frames = ours.dumps({"x": ours.to_serialize(x)})
    payload = frames[2:]
    assert sum(memoryview(f).nbytes for f in payload) == x.nbytes
    assert all(np.shares_memory(np.frombuffer(f, dtype="u1"), x) for f in payload)


def test_zero_copy_200mb_loads():
    x = _zero_copy_array()
    # One received buffer holding all shards back to back: the merge must be a view.
    frames = ours.dumps({"x": ours.to_serialize(x)})
    received = np.empty(x.nbytes, dtype="u1")
    received[:] = np.frombuffer(x, dtype="u1")
    views, start = [], 0
    for frame in frames[2:]:
        n = memoryview(frame).nbytes
        views.append(received[start : start + n].data)
        start += n
    got = ours.loads([frames[0], frames[1], *views])["x"]
    assert np.shares_memory(got, received)
    assert got.flags.writeable
    np.testing.assert_array_equal(got, x)
    # Shards in separate buffers must still arrive intact (one copy to join them).
    separate = ours.loads(to_wire(frames))["x"]
    np.testing.assert_array_equal(separate, x)


def test_zero_copy_from_theirs():
    x = _zero_copy_array()[:1024]
    frames = to_wire(theirs.dumps({"x": theirs.to_serialize(x)}, context={"compression": None}))
    got = ours.loads(frames)["x"]
    assert np.shares_memory(got, np.frombuffer(frames[2], dtype="u1"))
