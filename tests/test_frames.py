"""frames: the byte layout of one message on a stream (WIRE.md section 1), without sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distributed_comm import config, frames
from distributed_comm.frames import HEAD_FRAME_MAX, U64, Decoder, Limits

LIMITS = Limits(max_frames=1000, max_message_size=2**30)


def stream_bytes(msg_frames: list) -> bytes:
    parts, total = frames.encode(msg_frames)
    data = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
    assert len(data) == total
    return data


def read_back(data: bytes, limits: Limits = LIMITS) -> list[bytes]:
    """What a reader gets from exactly one message's bytes."""
    decoder = Decoder(limits)
    decoder.feed(data)
    assert len(decoder.messages) == 1, "reader must find exactly one message"
    assert decoder.at_message_boundary(), "reader must consume exactly the message"
    got, size = decoder.messages.popleft()
    assert size == len(data) - 8
    return [bytes(f) for f in got]


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_small_messages_round_trip_as_one_buffer(msg_frames):
    parts, _ = frames.encode(msg_frames)
    assert len(parts) == 1 and isinstance(parts[0], bytes)
    assert read_back(stream_bytes(msg_frames)) == msg_frames


def test_layout_is_h_then_prelude_then_frames():
    data = stream_bytes([b"ab", b"cde"])
    head, count, len0, len1 = struct.unpack_from("<4Q", data)
    assert (count, len0, len1) == (2, 2, 3)
    assert head == 8 * 3 + 5  # prelude + both (small) frames
    assert data[32:] == b"abcde"


def test_large_frames_are_views_of_the_callers_memory_and_read_separately():
    big = bytearray(b"x" * (frames.SMALL_MESSAGE + 1))
    parts, total = frames.encode([b"head", big, b"tail"])
    assert len(parts) == 3  # header + small head frame joined, the large frame, the tail
    assert isinstance(parts[1], memoryview) and parts[1].obj is big  # not copied
    assert total == 8 * 5 + 4 + len(big) + 4
    (head_size,) = U64.unpack_from(parts[0])
    assert head_size == 8 * 4 + 4 + len(big)  # K = 2: the large frame joins a tiny head
    assert read_back(stream_bytes([b"head", big, b"tail"])) == [b"head", bytes(big), b"tail"]


def test_fragmented_messages_are_joined():
    many = [b"y" * 1000] * 200  # 200 kB in small frames
    parts, _ = frames.encode(many)
    assert len(parts) == 1
    assert read_back(parts[0]) == many


def test_medium_frames_are_sent_from_the_callers_memory():
    """Only frames up to SMALL_FRAME are copied; a 64 KiB payload is not."""
    payload = bytearray(b"p" * 2**16)
    parts, _ = frames.encode([b"header", payload, b"a", b"b"])
    assert len(parts) == 3
    assert isinstance(parts[1], memoryview) and parts[1].obj is payload
    assert parts[2] == b"ab"  # small frames after it are joined again


def test_head_count():
    def k(*frames_):
        return frames.head_count(frames_, [frames.nbytes(f) for f in frames_])

    small = b"s" * frames.HEAD_FRAME_MAX
    big, other = bytearray(2**20), bytearray(2**20)
    assert k() == 0
    assert k(b"h", small) == 2
    # the first large frame joins a negligible head, with its own shards only
    assert k(b"h", memoryview(big)[:100_000], memoryview(big)[100_000:], other) == 3
    # ... but not when the bytes before it are not negligible
    assert k(small, b"x" * 3000, big) == 2
    assert k(big, b"tail") == 1
    # ... nor behind another array's memory: a reader holding the head in one
    # buffer would build it there, unaligned (a worker's get_data reply)
    assert k(b"h", memoryview(bytearray(40_000)), b"h2", big) == 3
    assert k(b"h", b"p" * 40_000, b"h2", big) == 4  # pickled bytes are fine


def test_a_large_frame_in_the_head_starts_a_buffer_of_its_own():
    """However the writer chose the head, a large frame and its shards are
    received into one fresh buffer that they start (aligned, and exactly a
    payload's memory); the small frames before it share another."""
    import numpy

    medium, big = b"m" * 40_000, bytes(range(256)) * 4096
    msg_frames = [b"header", medium, b"sub-header", big[:300_000], big[300_000:]]
    lengths = [len(f) for f in msg_frames]
    prelude = struct.pack(f"<{len(lengths) + 1}Q", len(lengths), *lengths)
    data = struct.pack("<Q", len(prelude) + sum(lengths)) + prelude + b"".join(msg_frames)
    decoder = Decoder(LIMITS)
    decoder.feed(data)
    (got, _) = decoder.pop()
    assert [bytes(f) for f in got] == msg_frames
    shard_0 = numpy.frombuffer(got[3], "u1")
    assert numpy.frombuffer(got[3], "c16").flags.aligned
    assert numpy.frombuffer(got[4], "u1").ctypes.data == shard_0.ctypes.data + 300_000
    assert got[3].obj is got[4].obj and got[3].obj is not got[1].obj


@pytest.mark.parametrize("k", [0, 1, 3])
def test_reader_accepts_any_k(k):
    """A distributed writer may put any number of whole frames in the head."""
    msg_frames = [b"a", b"bb", b"ccc"]
    lengths = [len(f) for f in msg_frames]
    head = 8 * 4 + sum(lengths[:k])
    data = struct.pack("<5Q", head, 3, *lengths) + b"".join(msg_frames)
    assert read_back(data) == msg_frames


def test_chunks_cut_at_the_limit():
    view = memoryview(bytes(range(10)))
    pieces = frames.chunks(view, 4)
    assert [bytes(p) for p in pieces] == [bytes(range(4)), bytes(range(4, 8)), bytes([8, 9])]
    assert frames.chunks(view, 10)[0] is view


def test_slice_frames_cuts_consecutive_views():
    lengths = [3, 5, 1000, 7]
    buffer = memoryview(bytearray(range(256)) * 4)[: sum(lengths)]
    views = frames.slice_frames(buffer, lengths)
    assert [v.nbytes for v in views] == lengths
    assert b"".join(views) == bytes(buffer)


def test_frames_over_c_int_max_are_chunked(monkeypatch):
    monkeypatch.setattr(frames, "C_INT_MAX", 2**20)
    frame = bytearray(3 * 2**20 + 5)
    parts, total = frames.encode([b"h", frame])
    assert [p.nbytes for p in parts[1:]] == [2**20, 2**20, 2**20, 5]
    assert all(p.obj is frame for p in parts[1:])
    assert total == 8 * 4 + 1 + len(frame)


def test_limit_on_head_size_is_checked_before_allocating():
    limits = Limits(max_frames=10, max_message_size=1000)
    limits.check_head_size(8 * 11 + 1000)
    with pytest.raises(ValueError, match="max-message-size"):
        limits.check_head_size(8 * 11 + 1001)
    with pytest.raises(ValueError, match="outside"):
        limits.check_head_size(3)


def test_too_many_frames_is_refused():
    limits = Limits(max_frames=2, max_message_size=1000)
    head = memoryview(struct.pack("<4Q", 3, 1, 1, 1))
    with pytest.raises(ValueError, match="3 frames.*max-frames"):
        limits.split_head(head)


def test_too_large_a_message_is_refused_from_its_prelude():
    limits = Limits(max_frames=10, max_message_size=100)
    head = memoryview(struct.pack("<3Q", 2, 60, 41))
    with pytest.raises(ValueError, match="101 bytes.*max-message-size"):
        limits.split_head(head)


@pytest.mark.parametrize(
    "head, match",
    [
        (struct.pack("<2Q", 5, 1), "cannot hold the prelude"),
        (struct.pack("<3Q", 2, 4, 4) + b"abc", "ends inside frame 0"),
        (struct.pack("<2Q", 1, 2) + b"abc", "1 bytes after its last frame"),
    ],
)
def test_malformed_heads(head, match):
    with pytest.raises(ValueError, match=match):
        LIMITS.split_head(memoryview(head))


def test_limits_from_settings():
    settings = {"distributed.comm.max-frames": 7, "distributed.comm.max-message-size": "1 MiB"}
    with config.set(settings):
        limits = Limits.from_config()
    assert (limits.max_frames, limits.max_message_size) == (7, 2**20)


def test_auto_message_size_is_a_quarter_of_ram():
    import psutil

    with config.set({"distributed.comm.max-message-size": "auto"}):
        assert Limits.from_config().max_message_size == psutil.virtual_memory().total // 4


def test_negative_limits_are_refused():
    with pytest.raises(ValueError, match="max_frames=-1"):
        Limits(-1, 10)


# --- Decoder: a byte stream, received in any pieces, back into messages ---------


def receive(decoder: Decoder, data: bytes, pieces: list[int]) -> None:
    """Hand *data* to *decoder* the way a socket would, in pieces of the given sizes."""
    position, sizes = 0, iter(pieces)
    while position < len(data):
        target = decoder.buffer()
        assert target.nbytes > 0 and not target.readonly
        count = min(target.nbytes, len(data) - position, next(sizes, len(data)) or 1)
        target[:count] = data[position : position + count]
        position += count
        decoder.received(count)


frame_sizes = st.sampled_from([0, 1, 7, 100, frames.HEAD_FRAME_MAX + 1, 70_000, 300_000])


@given(
    st.lists(st.lists(frame_sizes, min_size=1, max_size=5), min_size=1, max_size=6),
    st.lists(st.integers(1, 200_000), max_size=50),
)
def test_decoder_finds_every_message_whatever_the_pieces(messages, pieces):
    sent = [[bytes([n % 251]) * size for n, size in enumerate(sizes)] for sizes in messages]
    data = b"".join(stream_bytes(m) for m in sent)
    decoder = Decoder(LIMITS)
    receive(decoder, data, pieces)
    got = list(decoder.messages)
    assert [[bytes(f) for f in msg_frames] for msg_frames, _ in got] == sent
    assert [size for _, size in got] == [len(stream_bytes(m)) - 8 for m in sent]
    assert decoder.at_message_boundary()


def test_small_messages_are_cut_from_one_receive():
    data = b"".join(stream_bytes([b"op", b"x" * n]) for n in range(50))
    decoder = Decoder(LIMITS)
    target = decoder.buffer()
    assert target.nbytes >= len(data)  # one recv_into takes them all
    target[: len(data)] = data
    decoder.received(len(data))
    assert [bytes(f[1]) for f, _ in decoder.messages] == [b"x" * n for n in range(50)]


def test_large_frames_are_received_straight_into_their_own_buffer():
    big = bytes(range(256)) * 4096  # 1 MiB
    data = stream_bytes([b"header", big, b"tail"])
    decoder = Decoder(LIMITS)
    decoder.feed(data[:100])  # the prelude and a little of the head
    target = decoder.buffer()
    receive(decoder, data[100:], [])
    ((msg_frames, _),) = decoder.messages
    assert bytes(msg_frames[1]) == big
    # the receive went into the frame's memory: no copy out of a read-ahead buffer
    assert target.obj is msg_frames[1].obj
    import numpy

    # numpy arrays built on it are aligned for any standard dtype
    assert numpy.frombuffer(msg_frames[1], "c16").flags.aligned


def test_a_message_straddling_the_read_ahead_buffer_is_carried_over():
    data = b"".join(stream_bytes([b"y" * 90_000]) for _ in range(3))
    decoder = Decoder(LIMITS)
    receive(decoder, data, [frames.READ_AHEAD - 5, 7, 50_000])
    assert [bytes(f[0]) for f, _ in decoder.messages] == [b"y" * 90_000] * 3


def test_decoder_keeps_no_finished_message_alive():
    """A found message belongs to its reader: dropping it frees its memory."""
    import weakref

    decoder = Decoder(LIMITS)
    decoder.feed(stream_bytes([b"h", bytes(1_000_000)]))
    ((msg_frames, _),) = decoder.messages
    owner = weakref.ref(msg_frames[1].obj)
    decoder.messages.clear()
    del msg_frames
    assert owner() is None


def test_partial_message_is_not_at_a_boundary():
    data = stream_bytes([b"abc", bytes(200_000)])
    decoder = Decoder(LIMITS)
    decoder.feed(data[:-1])
    assert not decoder.messages and not decoder.at_message_boundary()
    decoder.feed(data[-1:])
    assert len(decoder.messages) == 1 and decoder.at_message_boundary()


@pytest.mark.parametrize(
    ("announced", "match"),
    [
        (struct.pack("<Q", 2**62), "outside"),  # H alone: refused from 8 bytes
        (struct.pack("<2Q", 2**20, 10**9), "frames; the limit"),  # huge count from 16 bytes
        (struct.pack("<3Q", 2**20, 1, 2**40), "max-message-size"),  # 1 TiB frame
    ],
)
def test_decoder_refuses_lies_before_allocating(announced, match):
    decoder = Decoder(LIMITS)
    with pytest.raises(ValueError, match=match):
        decoder.feed(announced)


@pytest.mark.parametrize("length", [2**63 - 20, 2**63 + 10, 2**64 - 100])
def test_an_absurd_frame_length_is_a_clear_error(length):
    """With the size limit lifted, a frame no process can hold still ends the
    stream with a ValueError that says so (not OverflowError or SystemError)."""
    decoder = Decoder(Limits(max_frames=10, max_message_size=2**64))
    with pytest.raises(ValueError, match="cannot allocate"):
        decoder.feed(struct.pack("<4Q", 24, 2, 10, length) + b"x" * 10)


def test_a_full_queue_holds_the_bytes_back_until_there_is_room():
    sent = [[b"op", bytes([n]) * 10] for n in range(7)]
    decoder = Decoder(LIMITS, max_queued_messages=3)
    decoder.feed(b"".join(stream_bytes(m) for m in sent))  # all seven in one receive
    got = []
    while decoder.messages:
        assert len(decoder.messages) <= 3
        got.append([bytes(f) for f in decoder.pop()[0]])
        decoder.resume()
    assert got == sent and decoder.at_message_boundary()


def test_no_buffer_for_the_next_message_while_the_queue_is_full_of_bytes():
    """A small message that fills the queue, and the next large message's
    prelude in the same receive: nothing is allocated for that one yet."""
    big = b"\x07" * (HEAD_FRAME_MAX * 4)
    decoder = Decoder(LIMITS, max_queued_bytes=1000)
    decoder.feed(stream_bytes([b"x" * 1000]) + stream_bytes([b"h", big])[:64])
    assert len(decoder.messages) == 1 and decoder.full
    assert not decoder.in_frame  # no fresh memory for `big` while the reader holds the queue
    decoder.pop()
    decoder.resume()
    assert decoder.in_frame  # now its buffer exists
    receive(decoder, stream_bytes([b"h", big])[64:], [])
    assert bytes(decoder.pop()[0][1]) == big


def test_a_full_queue_keeps_more_bytes_than_the_read_ahead_holds():
    """Held back past one read-ahead buffer's worth, the bytes must still fit
    somewhere (the buffer grows): ``feed`` once looped for ever here."""
    sent = [[n.to_bytes(3, "little")] for n in range(20_000)]  # ~400 KiB
    decoder = Decoder(LIMITS, max_queued_messages=2)
    decoder.feed(b"".join(stream_bytes(m) for m in sent))
    got = []
    while decoder.messages:
        got.append([bytes(f) for f in decoder.pop()[0]])
        decoder.resume()
    assert got == sent and decoder.at_message_boundary()
