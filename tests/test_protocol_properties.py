"""Property tests: generated messages survive dumps/loads, ours and across to distributed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import distributed_comm.protocol as ours

theirs = pytest.importorskip("distributed.protocol")

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
# Maps holding these keys are how the wire format spells sets, Enums and
# out-of-band objects; neither implementation can tell a user's map from them.
RESERVED_KEYS = {"__Set__", "__Enum__", "__Serialized__", "__Pickled__"}
keys = st.text(max_size=10).filter(lambda k: k not in RESERVED_KEYS) | st.integers(
    min_value=-(2**31), max_value=2**31
)
hashables = st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(max_size=10)

arrays = hnp.arrays(
    dtype=hnp.scalar_dtypes() | hnp.byte_string_dtypes() | hnp.unicode_string_dtypes(),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)


class Wrapped:
    """Array leaves, to be wrapped in each side's own Serialize class."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


def messages(leaves: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4)
            | st.tuples(children, children)
            | st.dictionaries(keys, children, max_size=4)
            | st.frozensets(hashables, max_size=4).map(set)
        ),
        max_leaves=20,
    )


plain_messages = messages(scalars)
messages_with_arrays = messages(scalars | arrays.map(Wrapped))


def mark(msg: object, protocol) -> object:
    """*msg* with each array wrapped for sending by *protocol*."""
    if isinstance(msg, Wrapped):
        return protocol.to_serialize(msg.array)
    if isinstance(msg, dict):
        return {k: mark(v, protocol) for k, v in msg.items()}
    if isinstance(msg, (list, tuple)):
        return type(msg)(mark(v, protocol) for v in msg)
    return msg


def assert_received(got: object, sent: object) -> None:
    """*got* is what *sent* should become: lists as tuples, arrays intact."""
    if isinstance(sent, Wrapped):
        assert isinstance(got, np.ndarray)
        assert got.dtype == sent.array.dtype and got.shape == sent.array.shape
        np.testing.assert_array_equal(got, sent.array)
    elif isinstance(sent, dict):
        assert type(got) is dict and got.keys() == sent.keys()
        for key in sent:
            assert_received(got[key], sent[key])
    elif isinstance(sent, (list, tuple)):
        assert type(got) is tuple and len(got) == len(sent)
        for g, s in zip(got, sent, strict=True):
            assert_received(g, s)
    else:
        assert type(got) is type(sent) and got == sent


PROPERTY_SETTINGS = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(plain_messages)
def test_plain_round_trip(msg):
    assert_received(ours.loads(ours.dumps(msg)), msg)


@PROPERTY_SETTINGS
@given(messages_with_arrays)
def test_round_trip_with_arrays(msg):
    frames = ours.dumps(mark(msg, ours), frame_split_size=64)  # tiny shards: merging is exercised
    assert_received(ours.loads(frames), msg)


@settings(max_examples=200, deadline=None)
@given(messages_with_arrays)
def test_ours_to_theirs(msg):
    assert_received(theirs.loads(ours.dumps(mark(msg, ours))), msg)


@settings(max_examples=200, deadline=None)
@given(messages_with_arrays)
def test_theirs_to_ours(msg):
    assert_received(ours.loads(theirs.dumps(mark(msg, theirs))), msg)


@settings(max_examples=200, deadline=None)
@given(plain_messages)
def test_same_body_bytes_as_theirs(msg):
    """Plain messages encode to the very same bytes as distributed's."""
    assert [bytes(f) for f in ours.dumps(msg)] == [bytes(f) for f in theirs.dumps(msg)]
