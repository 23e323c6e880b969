"""Unit tests of distributed_comm.protocol: API, families, errors, compression, buffers."""

from __future__ import annotations

import importlib
import inspect
import logging
import pickle as stdlib_pickle
import subprocess
import sys
import textwrap
import uuid

import msgpack
import numpy as np
import pytest

import distributed_comm.protocol as ours
from distributed_comm import config
from distributed_comm.protocol import compression, core
from distributed_comm.protocol.utils import merge_frames, split_frame

theirs = pytest.importorskip("distributed.protocol")
# The package re-exports a function named ``serialize``; reach the module itself.
serialize = importlib.import_module("distributed_comm.protocol.serialize")

PUBLIC = {
    "dumps",
    "loads",
    "serialize",
    "deserialize",
    "to_serialize",
    "Serialize",
    "Serialized",
    "ToPickle",
    "Pickled",
    "register_serialization",
    "register_serialization_family",
    "pack_frames",
    "unpack_frames",
    "nested_deserialize",
}


class Opaque:
    """Something neither msgpack nor pickle can encode."""

    def __reduce__(self):
        raise RuntimeError("refuses to be pickled")


class ToPickleable:
    def __init__(self, x: object, y: object) -> None:
        self.x, self.y = x, y


class Celsius:
    def __init__(self, degrees: float) -> None:
        self.degrees = degrees


# --- API ------------------------------------------------------------------------------


def test_exports_exactly_the_public_names():
    assert set(ours.__all__) == PUBLIC
    assert all(hasattr(ours, name) for name in PUBLIC)


@pytest.mark.parametrize(
    "name",
    ["dumps", "loads", "serialize", "deserialize", "register_serialization",
     "register_serialization_family"],
)  # fmt: skip
def test_signatures_match_distributed(name):
    def shape(func):
        return [(p.name, p.default) for p in inspect.signature(func).parameters.values()]

    assert shape(getattr(ours, name)) == shape(getattr(theirs, name))


def test_frame_packing_is_the_shared_implementation():
    from distributed_comm import frames

    assert ours.pack_frames is frames.pack_frames
    assert ours.unpack_frames is frames.unpack_frames


def test_import_does_not_import_numpy():
    code = "import sys, distributed_comm.protocol as p; p.loads(p.dumps({'op': 1})); "
    code += "print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- Messages -------------------------------------------------------------------------


def test_small_message_is_one_frame_and_lists_become_tuples():
    frames = ours.dumps({"op": "x", "keys": ["a", "b"], "n": [1, [2]]})
    assert len(frames) == 1
    assert msgpack.unpackb(frames[0]) == {"op": "x", "keys": ["a", "b"], "n": [1, [2]]}
    assert ours.loads(frames) == {"op": "x", "keys": ("a", "b"), "n": (1, (2,))}


def test_out_of_band_layout():
    frames = ours.dumps({"a": ours.to_serialize(b"xyz"), "b": ours.ToPickle(5)})
    body = msgpack.unpackb(frames[0])
    assert body == {"a": {"__Serialized__": 1}, "b": {"__Pickled__": 3}}
    header = msgpack.unpackb(frames[1])
    assert header["serializer"] == "dask" and header["num-sub-frames"] == 1
    assert bytes(frames[2]) == b"xyz"
    pickled = msgpack.unpackb(frames[3])
    assert stdlib_pickle.loads(pickled["pickled-obj"]) == 5 and pickled["num-sub-frames"] == 0


def test_deserialize_false_keeps_serialized_but_unpickles_topickle():
    frames = ours.dumps({"a": ours.to_serialize(b"xyz"), "b": ours.ToPickle({1, 2})})
    msg = ours.loads(frames, deserialize=False)
    assert isinstance(msg["a"], ours.Serialized)
    assert msg["b"] == {1, 2}
    assert ours.loads(ours.dumps(msg)) == {"a": b"xyz", "b": {1, 2}}


def test_pickle_fallback_is_logged_once(caplog):
    core._fallback_logged = False
    with caplog.at_level(logging.INFO, logger=core.__name__):
        for _ in range(3):
            assert ours.loads(ours.dumps({"c": Celsius(3.0)}))["c"].degrees == 3.0
    assert len([r for r in caplog.records if "pickling" in r.getMessage()]) == 1


def test_ints_beyond_64_bits_are_pickled():
    msg = {"big": 2**64, "in-set": {-(2**63) - 1}, "ok": 2**64 - 1}
    frames = ours.dumps(msg)
    assert len(frames) == 3  # body plus two pickled sub-headers
    assert ours.loads(frames) == msg
    assert theirs.loads(frames) == msg


def test_enum_outside_allow_list_is_refused():
    frames = ours.dumps({"e": uuid.SafeUUID.safe})
    with pytest.raises(RuntimeError, match="'uuid' is not allowed"):
        ours.loads(frames)
    with config.set({"distributed.scheduler.allowed-imports": ["uuid"]}):
        assert ours.loads(frames) == {"e": uuid.SafeUUID.safe}
    with pytest.raises(RuntimeError, match="'uuid' is not allowed"):
        ours.loads(frames)


def test_missing_frames_are_reported():
    frames = ours.dumps({"a": ours.to_serialize(b"xyz")})
    with pytest.raises(ValueError, match="needs 1 frames but only 0 follow"):
        ours.loads(frames[:2])
    body = msgpack.packb({"x": {"__Pickled__": 5}})
    with pytest.raises(ValueError, match="refers to frame 5, which holds no sub-header"):
        ours.loads([body, *frames[1:]])


def test_frames_may_be_any_writeable_buffer():
    x = np.arange(1000.0)
    frames = ours.dumps({"x": ours.to_serialize(x)})
    for kind in (bytearray, lambda f: np.frombuffer(bytearray(f), "u1"), memoryview):
        received = [kind(bytes(f)) for f in frames]
        got = ours.loads(received)["x"]
        np.testing.assert_array_equal(got, x)
        assert got.flags.writeable
    owner = np.frombuffer(bytearray(bytes(frames[2])), "u1")
    got = ours.loads([frames[0], frames[1], owner])["x"]
    assert np.shares_memory(got, owner)


def test_readonly_frames_give_writeable_arrays_by_copying():
    frames = [bytes(f) for f in ours.dumps({"x": ours.to_serialize(np.arange(4))})]
    got = ours.loads(frames)["x"]
    assert got.flags.writeable
    got[0] = 7  # must not raise


# --- Families and errors --------------------------------------------------------------


def test_on_error_message_gives_error_family():
    header, frames = ours.serialize(Opaque(), on_error="message")
    assert header == {"serializer": "error"}
    assert frames[0] == b"Could not serialize object of type Opaque"
    assert b"refuses to be pickled" in frames[1]
    with pytest.raises(TypeError, match="Could not serialize object of type Opaque"):
        ours.deserialize(header, frames)
    msg = ours.loads(ours.dumps({"x": ours.to_serialize(Opaque())}), deserialize=False)
    with pytest.raises(TypeError, match="refuses to be pickled"):
        ours.deserialize(msg["x"].header, msg["x"].frames)


def test_on_error_raise():
    with pytest.raises(TypeError, match="Could not serialize object of type Opaque") as info:
        ours.serialize(Opaque(), on_error="raise")
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(TypeError, match="Could not serialize"):
        ours.dumps({"x": ours.to_serialize(Opaque())}, on_error="raise")


def test_on_error_unknown_value():
    with pytest.raises(ValueError, match="on_error='ignore'"):
        ours.serialize(Opaque(), on_error="ignore")


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="'nope'"):
        ours.serialize(1, serializers=["nope"])
    with pytest.raises(TypeError, match="'nope'"):
        ours.deserialize({"serializer": "nope"}, [])


def test_deserializers_restrict_families():
    header, frames = ours.serialize(Celsius(1.0))
    assert header["serializer"] == "pickle"
    with pytest.raises(TypeError, match="serialized with pickle"):
        ours.deserialize(header, frames, deserializers=["msgpack"])


def test_pickle_family_keeps_writeable_flags():
    x = np.arange(10)
    y = np.arange(5)
    y.flags.writeable = False
    header, frames = ours.serialize(ToPickleable(x, y), serializers=["pickle"])
    assert header["writeable"] == (True, False)
    got = ours.deserialize(header, [bytes(f) for f in frames])
    assert got.x.flags.writeable and not got.y.flags.writeable


def test_pickle_protocol_from_context():
    header, frames = ours.serialize(np.arange(10), ["pickle"], context={"pickle-protocol": 4})
    assert len(frames) == 1 and header["writeable"] == ()
    header, frames = ours.serialize(np.arange(10), ["pickle"])
    assert len(frames) == 2


def test_register_serialization_and_family():
    def dumps_celsius(c, context=None):
        return {"unit": "C", "sender": (context or {}).get("sender")}, [str(c.degrees).encode()]

    def loads_celsius(header, frames):
        assert header["unit"] == "C"
        return Celsius(float(bytes(frames[0])))

    ours.register_serialization(Celsius, dumps_celsius, loads_celsius)
    try:
        header, frames = ours.serialize(Celsius(21.5), context={"sender": "a"})
        assert header["serializer"] == "dask" and header["sub-header"]["sender"] == "a"
        assert header["type"].endswith("Celsius")
        assert ours.deserialize(header, frames).degrees == 21.5
    finally:
        del serialize._registry[Celsius]

    with pytest.raises(TypeError, match="needs a type"):
        ours.register_serialization("Celsius", dumps_celsius, loads_celsius)

    ours.register_serialization_family(
        "upper", lambda x: ({}, [x.upper().encode()]), lambda h, f: bytes(f[0]).decode()
    )
    try:
        header, frames = ours.serialize("abc", serializers=["upper"])
        assert header["serializer"] == "upper"
        assert ours.deserialize(header, frames) == "ABC"
    finally:
        del serialize.families["upper"]


def test_collections_iterate_only_when_items_are_registered():
    header, frames = ours.serialize([np.arange(3), np.arange(4)])
    assert header["is-collection"] and header["type-serialized"] == "list"
    assert [h["serializer"] for h in header["sub-headers"]] == ["dask", "dask"]
    assert len(frames) == 2
    header, _ = ours.serialize([1, 2])
    assert "is-collection" not in header and header["serializer"] == "pickle"
    header, _ = ours.serialize(ours.to_serialize([1, 2]))
    assert header["is-collection"]
    header, frames = ours.serialize({("tuple", "key"): b"x"})
    assert header["is-collection"] and header["sub-headers"][0]["key"] == ("tuple", "key")
    header, _ = ours.serialize({Celsius(1): b"x"})  # keys msgpack cannot encode
    assert "is-collection" not in header


def test_serialized_passes_through_serialize():
    serialized = ours.Serialized({"serializer": "pickle", "writeable": ()}, [b"x"])
    assert ours.serialize(serialized) == (serialized.header, serialized.frames)


def test_nested_deserialize():
    header, frames = ours.serialize(b"abc")
    msg = {
        "a": ours.to_serialize(1),
        "b": [ours.ToPickle(2), {"c": ours.Serialized(header, frames)}],
        "d": (ours.to_serialize(3),),
    }
    assert ours.nested_deserialize(msg) == {"a": 1, "b": [2, {"c": b"abc"}], "d": (3,)}
    kept = ours.nested_deserialize(msg, emulate_deserialize=False)
    assert isinstance(kept["a"], ours.Serialize) and kept["b"][0] == 2
    assert isinstance(msg["b"][0], ours.ToPickle)  # the input is not modified


def test_main_objects_are_pickled_by_value():
    script = textwrap.dedent(
        """
        import sys
        from distributed_comm.protocol import dumps, to_serialize
        class Local:
            value = 42
        frames = dumps({"x": to_serialize(Local()), "f": to_serialize(lambda: 7)})
        sys.stdout.buffer.write(b"".join(bytes(f).hex().encode() + b"\\n" for f in frames))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    frames = [bytes.fromhex(line.decode()) for line in out.stdout.split()]
    msg = ours.loads(frames)
    assert msg["x"].value == 42 and msg["f"]() == 7


# --- Compression ----------------------------------------------------------------------


def test_compression_rule():
    zeros = bytes(100_000)
    noise = np.random.default_rng(0).bytes(100_000)
    assert compression.maybe_compress(zeros, None) == (None, zeros)
    assert compression.maybe_compress(b"0" * 9_999, "lz4")[0] is None  # too small
    assert compression.maybe_compress(noise, "lz4") == (None, noise)
    codec, packed = compression.maybe_compress(zeros, "lz4")
    assert codec == "lz4" and len(packed) < 1000
    assert bytes(compression.decompress(["lz4"], [packed], limit=2**20)[0]) == zeros
    # compressible only at the sampled spots is not enough: the whole must shrink too
    mixed = np.frombuffer(np.random.default_rng(1).bytes(1_000_000), "u1").copy()
    for i in range(5):
        start = i * (1_000_000 - 10_000) // 4
        mixed[start : start + 10_000] = 0
    sample = compression._sample(mixed.data)
    assert len(compression.codecs["zlib"][0](sample)) < 0.1 * sample.nbytes
    assert compression.maybe_compress(mixed.data, "zlib") == (None, mixed.data)


def test_compression_names():
    assert compression.resolve(None) is None and compression.resolve(False) is None
    assert compression.resolve("auto") == "lz4"
    with pytest.raises(ValueError, match="'brotli'"):
        compression.resolve("brotli")
    with pytest.raises(ValueError, match="'brotli'"):
        compression.decompress(["brotli"], [b"x"], limit=2**20)
    with pytest.raises(ValueError, match="2 compressions for 1 frames"):
        compression.decompress([None, None], [b"x"], limit=2**20)


def test_dumps_compresses_only_when_negotiated():
    zeros = np.zeros(100_000)
    plain = ours.dumps({"x": ours.to_serialize(zeros)})
    assert memoryview(plain[2]).nbytes == zeros.nbytes
    packed = ours.dumps({"x": ours.to_serialize(zeros)}, context={"compression": "lz4"})
    assert len(packed[2]) < 10_000
    got = ours.loads(packed)["x"]
    np.testing.assert_array_equal(got, zeros)
    assert got.flags.writeable


# --- Shards ---------------------------------------------------------------------------


def test_split_and_merge_are_zero_copy_for_adjacent_views():
    owner = bytearray(range(256)) * 40
    shards = split_frame(owner, 1000)
    assert [s.nbytes for s in shards] == [1000] * 10 + [240]
    merged = merge_frames(shards)
    assert merged.obj is owner and bytes(merged) == bytes(owner)
    readonly = bytes(owner)
    merged = merge_frames(split_frame(readonly, 1000))
    assert merged.obj is readonly


def test_merge_copies_separate_buffers():
    merged = merge_frames([b"ab", bytearray(b"cd"), memoryview(b""), np.array([101], "u1")])
    assert bytes(merged) == b"abcde"
    assert not memoryview(merged).readonly


def test_shard_setting_follows_config_changes():
    x = np.zeros(3 * 2**20, dtype="u1")
    assert len(ours.dumps({"x": ours.to_serialize(x)})) == 3  # caches the 64 MiB default
    with config.set({"distributed.comm.shard": "1MiB"}):
        assert len(ours.dumps({"x": ours.to_serialize(x)})) == 5
    assert len(ours.dumps({"x": ours.to_serialize(x)})) == 3
    assert len(ours.dumps({"x": ours.to_serialize(x)}, frame_split_size=2**20)) == 5


def test_works_without_numpy():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["numpy"] = None  # any "import numpy" now fails
        import distributed_comm.protocol as p
        data = bytes(range(256)) * 4000
        frames = p.dumps({"d": p.to_serialize(data)}, frame_split_size=100_000)
        assert len(frames) == 13, len(frames)
        received = [bytearray(f) for f in frames]  # separate buffers: merge must copy
        assert p.loads(received) == {"d": data}
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("msg", [{"__Set__": True}, {"__Enum__": 1, "x": 2}])
def test_maps_that_look_like_wire_markers_fail_clearly(msg):
    """Such maps are ambiguous on the wire (distributed fails on them with a
    KeyError); ours says which key it could not make sense of."""
    with pytest.raises(ValueError, match="could not decode"):
        ours.loads(ours.dumps(msg))
