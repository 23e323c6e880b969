"""Fuzzing the decoders: random and mutated valid input, only documented errors escape.

Documented errors: ``ValueError`` from :mod:`distributed_comm.frames`
(``unpack_frames``, ``Limits.split_head``); :data:`protocol.LOADS_ERRORS`
(``ValueError``, ``TypeError``, ``RuntimeError``) from ``protocol.loads``.
Example counts are bounded for CI; ``DC_STRESS=1`` runs many more.
"""

from __future__ import annotations

import asyncio
import enum
import os
import random
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import distributed_comm as dc
from distributed_comm import frames, protocol
from distributed_comm.frames import Limits
from distributed_comm.protocol import LOADS_ERRORS, Serialize, ToPickle, to_serialize

from .conftest import handshake_bytes, read_message, wire

STRESS = bool(os.environ.get("DC_STRESS"))
EXAMPLES = 20_000 if STRESS else 400
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=not STRESS,
)

LIMITS = Limits(max_frames=1000, max_message_size=2**24)
TRIED = {"frames": 0, "loads": 0, "stream": 0}


class Shade(enum.Enum):
    DARK = 1


def valid_messages() -> list[list]:
    """Frames of many message shapes: the seeds that mutations start from."""
    msgs = [
        {"op": "ping"},
        {"op": "data", "keys": ("x", "y"), "n": 10**12, "ok": True, "none": None},
        {"s": {1, 2, 3}, "t": (1, 2.5, "x"), "b": b"bytes"},
        {"x": to_serialize(np.arange(100, dtype="f8"))},
        {"x": to_serialize(np.ones((3, 4), dtype="i2", order="F"))},
        {"x": to_serialize(b"payload" * 50), "y": to_serialize(bytearray(b"ba" * 30))},
        {"x": to_serialize([np.arange(3), b"two", {"k": np.zeros(2)}])},
        {"x": ToPickle({"a": (1, 2)}), "f": to_serialize(len)},
        {"x": to_serialize(np.array([1, "obj"], dtype=object))},
        {"x": to_serialize(np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]))},
        {"x": Serialize(memoryview(b"abcdef").cast("B", (2, 3)))},
        {"e": Shade.DARK},
        [1, 2, {"nested": [to_serialize(b"x")]}],
    ]
    out = [protocol.dumps(m) for m in msgs]
    out.append(protocol.dumps({"x": to_serialize(np.arange(10))}, context={"compression": "lz4"}))
    big = np.tile(np.arange(100, dtype="u1"), 200)  # compressible: really compressed
    out.append(protocol.dumps({"x": to_serialize(big)}, context={"compression": "zlib"}))
    out.append(protocol.dumps({"x": to_serialize(big)}, context={"compression": "lz4"}))
    return [[bytes(memoryview(f).cast("B")) for f in msg] for msg in out]


SEEDS = valid_messages()


def mutate(rnd: random.Random, msg: list[bytes]) -> list[bytes]:
    """*msg* with a few random edits: flipped/inserted/deleted bytes, truncated,
    swapped, dropped or duplicated frames."""
    msg = list(msg)
    for _ in range(rnd.randint(1, 4)):
        i = rnd.randrange(len(msg))
        frame = bytearray(msg[i])
        action = rnd.randrange(7)
        if action == 0 and frame:
            frame[rnd.randrange(len(frame))] ^= 1 << rnd.randrange(8)
        elif action == 1 and frame:
            frame[rnd.randrange(len(frame))] = rnd.choice([0, 0x7F, 0x80, 0xC1, 0xDD, 0xFF])
        elif action == 2:
            frame = frame[: rnd.randrange(len(frame) + 1)]
        elif action == 3:
            at = rnd.randrange(len(frame) + 1)
            frame[at:at] = rnd.randbytes(rnd.randint(1, 9))
        elif action == 4 and len(msg) > 1:
            j = rnd.randrange(len(msg))
            msg[i], msg[j] = msg[j], msg[i]
            continue
        elif action == 5 and len(msg) > 1:
            del msg[i]
            continue
        elif action == 6:
            msg.insert(i, msg[i])
            continue
        msg[i] = bytes(frame)
    return msg


def check_loads(msg_frames: list, **kwargs) -> None:
    TRIED["loads"] += 1
    for load in (protocol.loads, protocol.loads_untrusted):
        try:
            load(msg_frames, **kwargs)
        except LOADS_ERRORS:
            pass


@fuzz
@given(st.binary(max_size=400))
def test_unpack_frames_random_bytes(data):
    TRIED["frames"] += 1
    for options in ({}, {"remainder": True}, {"partial": True}):
        try:
            frames.unpack_frames(data, **options)
        except ValueError:
            pass


@fuzz
@given(st.binary(max_size=400))
def test_split_head_random_bytes(data):
    TRIED["frames"] += 1
    try:
        got, missing = LIMITS.split_head(memoryview(data))
    except ValueError:
        return
    # what it accepted is consistent: views inside the head, lengths within the limits
    assert sum(f.nbytes for f in got) + 8 * (len(got) + len(missing) + 1) == len(data)
    assert sum(missing) <= LIMITS.max_message_size


@fuzz
@given(
    st.lists(
        st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 8, 2**31, 2**63, 2**64 - 1]),
        min_size=1,
        max_size=8,
    ),
    st.binary(max_size=64),
)
def test_split_head_lying_preludes(words, payload):
    """Preludes made of extreme integers: counts, sizes near 2**64, sums that overflow u64."""
    TRIED["frames"] += 1
    head = memoryview(struct.pack(f"<{len(words)}Q", *words) + payload)
    try:
        LIMITS.split_head(head)
    except ValueError:
        pass
    try:
        LIMITS.check_head_size(words[0])
    except ValueError:
        pass


@fuzz
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=6))
def test_loads_random_frames(msg_frames):
    check_loads(msg_frames)
    check_loads(msg_frames, deserialize=False)


@fuzz
@given(st.integers(0, len(SEEDS) - 1), st.randoms(use_true_random=False))
def test_loads_mutated_valid_messages(index, rnd):
    check_loads(mutate(rnd, SEEDS[index]))


@fuzz
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "__Serialized__",
                        "__Pickled__",
                        "__Set__",
                        "__Enum__",
                        "as-list",
                        "num-sub-frames",
                        "serializer",
                        "sub-header",
                        "type-serialized",
                        "compression",
                        "split-num-sub-frames",
                        "split-offsets",
                        "pickled-obj",
                        "is-collection",
                        "sub-headers",
                        "frame-lengths",
                        "name",
                        "__module__",
                        "__name__",
                        "dtype",
                        "shape",
                        "strides",
                        "writeable",
                        "pickle",
                    ]
                )  # fmt: skip
                | st.text(max_size=3),
                children,
                max_size=4,
            )
        ),
        max_leaves=12,
    ),
    st.lists(st.binary(max_size=40), max_size=4),
)
def test_loads_structured_lies(body, extra):
    """msgpack that is well formed but says the wrong things: headers, indices, markers."""
    import msgpack

    packed = msgpack.packb(body, use_bin_type=True)
    check_loads([packed, *extra])
    check_loads([packed, packed, *extra])


def test_figures_are_recorded():
    """Not a check: prints what the fuzz tests tried (run with -s to see it)."""
    print(f"\nfuzz inputs tried: {TRIED}")


async def test_mutated_messages_over_a_socket_keep_the_stream_in_step():
    """Each mutated (but correctly framed) message is followed by a numbered good
    one: every good one must arrive, in order, on the same comm."""
    rnd = random.Random(8)
    count = 4000 if STRESS else 300
    seen: list = []
    errors: list = []
    done = asyncio.Event()

    async def handler(comm):
        while len(seen) < count:
            try:
                msg = await comm.read()
            except LOADS_ERRORS as exc:
                errors.append(type(exc))
                continue
            if isinstance(msg, dict) and msg.get("op") == "seq":
                seen.append(msg["i"])
        done.set()

    async with dc.listen("tcp://127.0.0.1:0", handler) as listener:
        host, port = dc.get_address_host_port(listener.contact_address)
        reader, writer = await asyncio.open_connection(host, port)
        await read_message(reader)
        writer.write(handshake_bytes())
        for i in range(count):
            writer.write(wire(mutate(rnd, rnd.choice(SEEDS))))
            writer.write(wire(protocol.dumps({"op": "seq", "i": i})))
            if i % 50 == 0:
                await writer.drain()
        await writer.drain()
        await asyncio.wait_for(done.wait(), 30)
        writer.close()
    TRIED["stream"] += count
    assert seen == list(range(count))
    assert errors, "mutations should make some messages undecodable"


def test_undocumented_decode_errors_become_value_errors_naming_the_cause():
    """Regression: KeyError, UnpicklingError, zlib.error, LZ4BlockError, EOFError...
    used to escape ``loads`` on malformed input (found by the fuzzers above)."""
    import msgpack
    import pytest

    body = msgpack.packb({"x": {"__Pickled__": 1}})
    no_payload = [body, msgpack.packb({"num-sub-frames": 0})]
    with pytest.raises(ValueError, match="KeyError: 'pickled-obj'") as info:
        protocol.loads(no_payload)
    assert isinstance(info.value.__cause__, KeyError)
    bad_zlib = [
        body,
        msgpack.packb({"pickled-obj": b"", "compression": ("zlib",), "num-sub-frames": 1}),
        b"junk",
    ]
    with pytest.raises(ValueError, match="error"):
        protocol.loads(bad_zlib)
    truncated = [body, msgpack.packb({"pickled-obj": b"\x80\x05K", "num-sub-frames": 0})]
    with pytest.raises(ValueError, match="UnpicklingError|EOFError"):
        protocol.loads(truncated)


def test_sub_header_frame_count_must_be_a_natural_number():
    import msgpack
    import pytest

    body = msgpack.packb({"x": {"__Serialized__": 1}})
    for lie in (-1, "3", 2.0, None):
        with pytest.raises(ValueError, match="declares"):
            protocol.loads([body, msgpack.packb({"num-sub-frames": lie}), b""])
    with pytest.raises(ValueError, match="not a map"):
        protocol.loads([body, msgpack.packb([1, 2])])


def test_split_head_too_short_for_a_count():
    """Regression: a head under 8 bytes raised struct.error instead of ValueError."""
    import pytest

    for size in range(8):
        with pytest.raises(ValueError, match="no frame count"):
            LIMITS.split_head(memoryview(bytes(size)))
