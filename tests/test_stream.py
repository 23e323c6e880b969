"""stream: framed messages over a real loopback socket, below the comm layer."""

from __future__ import annotations

import asyncio
import socket

import pytest
from tornado.iostream import IOStream, StreamClosedError

from distributed_comm import frames, stream
from distributed_comm.stream import SocketStream, take_socket

LIMITS = frames.Limits(max_frames=1000, max_message_size=2**30)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


def message(*msg_frames: bytes) -> list:
    parts, _ = frames.encode(list(msg_frames))
    return parts


async def test_messages_arrive_in_order_then_the_end():
    a, b = tcp_pair()
    sender, receiver = SocketStream(a, LIMITS), SocketStream(b, LIMITS)
    for n in range(100):
        sender.write(message(b"op", str(n).encode()))
    await sender.drain()
    sender.close()
    for n in range(100):
        got, _ = await asyncio.wait_for(receiver.read_message(), 5)
        assert bytes(got[1]) == str(n).encode()
    # what arrived before the end is handed out first; then the end is an error
    with pytest.raises(StreamClosedError):
        await asyncio.wait_for(receiver.read_message(), 5)
    assert receiver.closed()


async def test_writes_larger_than_the_socket_buffer_are_queued_and_drained():
    a, b = tcp_pair()
    sender, receiver = SocketStream(a, LIMITS), SocketStream(b, LIMITS)
    payload = bytes(range(256)) * (64 * 1024)  # 16 MiB: far more than the kernel takes at once
    sender.write(message(b"h", payload))
    assert sender.writing()
    got, _ = await asyncio.wait_for(receiver.read_message(), 10)
    await asyncio.wait_for(sender.drain(), 10)
    assert not sender.writing()
    assert bytes(got[1]) == payload


async def test_more_buffers_than_one_sendmsg_takes():
    a, b = tcp_pair()
    limits = frames.Limits(max_frames=10_000, max_message_size=2**30)
    sender, receiver = SocketStream(a, limits), SocketStream(b, limits)
    parts = [bytes([n % 256]) * 5000 for n in range(3000)]  # many buffers, one message
    prelude = frames.pack_frames_prelude(parts)  # the head region: just the prelude
    sender.write([frames.U64.pack(len(prelude)), prelude, *parts])
    got, _ = await asyncio.wait_for(receiver.read_message(), 10)
    assert [bytes(f) for f in got] == parts


async def test_a_slow_reader_stops_the_read_ahead(monkeypatch):
    monkeypatch.setattr(stream, "_MAX_QUEUED_MESSAGES", 10)
    a, b = tcp_pair()
    sender, receiver = SocketStream(a, LIMITS), SocketStream(b, LIMITS)
    for n in range(500):
        sender.write(message(b"op", n.to_bytes(2, "little")))
    await asyncio.sleep(0.2)
    assert len(receiver._messages) == 10  # not one more, though one receive holds many
    got = [int.from_bytes((await receiver.read_message())[0][1], "little") for _ in range(500)]
    assert got == list(range(500))  # reading resumes the read-ahead; nothing lost


async def test_no_fresh_memory_for_the_next_message_while_the_queue_is_full():
    """A queue at its byte limit stops the receive at once: the next message's
    large frames get no buffer (fresh memory) until the reader takes the last one.
    With the default limit, one 2 MiB message fills the queue."""
    a, b = tcp_pair()
    sender, receiver = SocketStream(a, LIMITS), SocketStream(b, LIMITS)
    payloads = [bytes([n]) * 2**21 for n in range(3)]
    for payload in payloads:
        sender.write(message(b"h", payload))
    for payload in payloads:
        while not receiver._messages:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # time to read on, if it would
        assert len(receiver._messages) == 1 and not receiver._decoder.in_frame
        got, _ = await receiver.read_message()
        assert bytes(got[1]) == payload
    await sender.drain()


async def test_reading_does_not_resume_while_the_queue_is_still_full(monkeypatch):
    """Taking a small message off a queue a large one keeps full must not
    resume the receive (it would read ahead past the limit, a piece per event)."""
    monkeypatch.setattr(stream, "_MAX_QUEUED_BYTES", 2**20)
    a, b = tcp_pair()
    sender, receiver = SocketStream(a, LIMITS), SocketStream(b, LIMITS)
    large = [bytes([n]) * 2**21 for n in range(2)]
    for msg_frames in ([b"small"], [b"h", large[0]], [b"h", large[1]]):
        sender.write(message(*msg_frames))
    while len(receiver._messages) < 2:
        await asyncio.sleep(0.01)
    got, _ = await receiver.read_message()
    assert bytes(got[0]) == b"small"
    await asyncio.sleep(0.05)  # time to read on, if it would
    assert len(receiver._messages) == 1 and not receiver._decoder.in_frame
    for payload in large:
        got, _ = await asyncio.wait_for(receiver.read_message(), 5)
        assert bytes(got[1]) == payload
    await sender.drain()


async def test_messages_held_back_by_a_full_queue_survive_the_stream_closing():
    """The peer sends more small messages than the queue takes and goes away;
    our write then fails and closes the stream. What had arrived, queued or
    held back, is still read, in order, before the error."""
    a, b = tcp_pair()
    receiver = SocketStream(b, LIMITS)
    count = stream._MAX_QUEUED_MESSAGES * 2
    a.sendall(b"".join(b"".join(message(n.to_bytes(4, "little"))) for n in range(count)))
    a.close()
    while len(receiver._messages) < stream._MAX_QUEUED_MESSAGES:
        await asyncio.sleep(0.01)
    with pytest.raises(StreamClosedError):
        for _ in range(50):  # the peer is gone: a write fails soon
            receiver.write([b"ping"])
            await asyncio.sleep(0.01)
    got = []
    with pytest.raises(StreamClosedError):
        while True:
            got.append(int.from_bytes((await receiver.read_message())[0][0], "little"))
    assert got == list(range(count))


async def test_broken_framing_held_back_by_a_full_queue_comes_after_its_messages():
    """A bad head behind more messages than the queue takes: every message
    before it is read, in order, then the ValueError."""
    a, b = tcp_pair()
    receiver = SocketStream(b, LIMITS)
    count = stream._MAX_QUEUED_MESSAGES * 2
    a.sendall(
        b"".join(b"".join(message(n.to_bytes(4, "little"))) for n in range(count))
        + frames.U64.pack(2**62)
    )
    got = []
    with pytest.raises(ValueError, match="outside"):
        while True:
            msg_frames, _ = await asyncio.wait_for(receiver.read_message(), 5)
            got.append(int.from_bytes(msg_frames[0], "little"))
    assert got == list(range(count))
    a.close()


async def test_a_peer_breaking_the_framing_is_a_value_error():
    a, b = tcp_pair()
    receiver = SocketStream(b, LIMITS)
    a.sendall(frames.U64.pack(2**62))
    with pytest.raises(ValueError, match="outside"):
        await asyncio.wait_for(receiver.read_message(), 5)
    assert receiver.closed()
    a.close()


async def test_writing_to_a_closed_stream_raises():
    a, b = tcp_pair()
    sender = SocketStream(a, LIMITS)
    sender.close()
    with pytest.raises(StreamClosedError):
        sender.write([b"x"])
    b.close()


async def test_a_waiting_reader_learns_of_an_abort():
    a, b = tcp_pair()
    receiver = SocketStream(b, LIMITS)
    reading = asyncio.ensure_future(receiver.read_message())
    await asyncio.sleep(0.01)
    receiver.close()
    with pytest.raises(StreamClosedError):
        await asyncio.wait_for(reading, 5)
    a.close()


async def test_take_socket_keeps_what_tornado_already_read():
    a, b = tcp_pair()
    data = b"".join(b"".join(message(b"m", bytes([n]))) for n in range(3))
    a.sendall(data)
    tornado_stream = IOStream(b)
    assert await tornado_stream.read_bytes(1) == data[:1]  # Tornado buffers the rest
    sock, buffered = take_socket(tornado_stream)
    assert sock is b and buffered == data[1:]
    receiver = SocketStream(sock, LIMITS, data[:1] + buffered)
    got = [bytes((await receiver.read_message())[0][1]) for _ in range(3)]
    assert got == [b"\0", b"\1", b"\2"]
    a.close()
    receiver.close()


async def test_a_second_concurrent_reader_is_refused():
    a, b = tcp_pair()
    receiver = SocketStream(b, LIMITS)
    first = asyncio.ensure_future(receiver.read_message())
    await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError, match="already being read"):
        await receiver.read_message()
    a.sendall(b"".join(message(b"x")))
    got, _ = await asyncio.wait_for(first, 5)  # the first reader is still served
    assert bytes(got[0]) == b"x"
    a.close()
    receiver.close()


async def test_after_a_framing_error_writes_get_a_closed_stream_error():
    """Only the reader hears why (ValueError); writers just find the stream closed."""
    a, b = tcp_pair()
    receiver = SocketStream(b, LIMITS)
    a.sendall(frames.U64.pack(2**62))
    for _ in range(100):
        if receiver.closed():
            break
        await asyncio.sleep(0.01)
    with pytest.raises(StreamClosedError) as info:
        receiver.write([b"x"])
    assert isinstance(info.value.real_error, ValueError)
    with pytest.raises(ValueError, match="outside"):
        await receiver.read_message()
    a.close()
