"""What every Comm does, whatever carries it.

One suite, parametrised over transports: a new transport joins by adding an
entry to ``TRANSPORTS`` (an address to listen on, plus listen/connect keyword
arguments), and must then pass everything here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

import distributed_comm as dc
from distributed_comm.protocol import Serialize, Serialized, ToPickle, deserialize, to_serialize

trustme = pytest.importorskip("trustme")


@dataclass
class Transport:
    name: str
    listen_address: str
    listen_kwargs: dict = field(default_factory=dict)
    connect_kwargs: dict = field(default_factory=dict)


def _secure(scheme: str):
    def make(contexts) -> Transport:
        server, client = contexts
        address = f"{scheme}://127.0.0.1:0"
        return Transport(scheme, address, {"ssl_context": server}, {"ssl_context": client})

    return make


TRANSPORTS: dict[str, Callable[..., Transport]] = {
    "inproc": lambda contexts: Transport("inproc", "inproc://"),
    "tcp": lambda contexts: Transport("tcp", "tcp://127.0.0.1:0"),
    "tls": _secure("tls"),
    "unix": lambda contexts: Transport("unix", "unix://"),
    "ws": lambda contexts: Transport("ws", "ws://127.0.0.1:0"),
    "wss": _secure("wss"),
}


@pytest.fixture(params=list(TRANSPORTS))
def transport(request, tls_contexts) -> Transport:
    return TRANSPORTS[request.param](tls_contexts)


class Pair:
    """A started listener that queues the server ends of accepted comms."""

    def __init__(self, transport: Transport, deserialize: bool = True) -> None:
        self.transport = transport
        self.accepted: asyncio.Queue = asyncio.Queue()
        self.listener = dc.listen(
            transport.listen_address,
            self.accepted.put,
            deserialize=deserialize,
            **transport.listen_kwargs,
        )

    async def connect(self, **kwargs) -> tuple[dc.Comm, dc.Comm]:
        """A connected (client end, server end)."""
        client = await dc.connect(
            self.listener.contact_address, **self.transport.connect_kwargs, **kwargs
        )
        server = await asyncio.wait_for(self.accepted.get(), 5)
        return client, server


@pytest.fixture
async def pair(transport):
    pair = Pair(transport)
    await pair.listener.start()
    yield pair
    pair.listener.stop()


def unwrap(value):
    """The object behind a still-wrapped Serialize (inproc) or Serialized (wire)."""
    if isinstance(value, Serialize):
        return value.data
    assert isinstance(value, Serialized), value
    return deserialize(value.header, value.frames)


async def test_echo_of_common_messages(pair):
    client, server = await pair.connect()
    messages = [
        {"op": "ping"},
        {"op": "data", "keys": ("x", "y"), "nbytes": {"x": 10**12}, "ok": True, "none": None},
        b"x" * 1_000_000,
        "text \N{SNOWMAN}",
        12345,
        (1, (2.5, b"three")),
    ]
    for message in messages:
        await client.write(message)
        got = await server.read()
        assert got == message
        await server.write(got)
        assert await client.read() == message


async def test_numpy_array_round_trip(pair):
    client, server = await pair.connect()
    array = np.arange(100_000, dtype="f8").reshape(100, 1000)
    await client.write({"x": to_serialize(array)})
    got = (await server.read())["x"]
    np.testing.assert_array_equal(got, array)
    assert got.dtype == array.dtype and got.shape == array.shape


async def test_messages_keep_their_order(pair):
    client, server = await pair.connect()
    n = 2000

    async def send():
        for i in range(n):
            await client.write({"i": i})

    sender = asyncio.create_task(send())
    assert [(await server.read())["i"] for _ in range(n)] == list(range(n))
    await sender


async def test_addresses_and_handshake_info(pair):
    client, server = await pair.connect(handshake_overrides={"extra": "from the client"})
    scheme = pair.transport.name + "://"
    assert client.peer_address == pair.listener.contact_address
    assert pair.listener.listen_address.startswith(scheme)
    assert client.local_address.startswith(scheme) and server.local_address.startswith(scheme)
    assert server.peer_address == client.local_address
    assert client.same_host and server.same_host

    for comm in (client, server):
        assert comm.local_info["address"] == comm.local_address
        assert comm.remote_info["address"] == comm.peer_address
        assert comm.handshake_options == {"pickle-protocol": 5, "compression": None}
        assert comm.local_info["python"] == comm.remote_info["python"]
        assert comm.local_info["compression"] is None  # same host: never compress
    assert server.remote_info["extra"] == "from the client"
    assert "extra" not in server.local_info
    assert {k: v for k, v in client.remote_info.items() if k != "address"} == {
        k: v for k, v in server.local_info.items() if k != "address"
    }


async def test_repr_names_both_ends_and_the_closed_state(pair):
    client, _ = await pair.connect()
    assert client.local_address in repr(client) and client.peer_address in repr(client)
    assert "closed" not in repr(client)
    await client.close()
    assert "closed" in repr(client)


@pytest.mark.parametrize("closer", ["client", "server"])
@pytest.mark.parametrize("how", ["close", "abort"])
async def test_closing_one_end_fails_a_pending_read_on_the_other(pair, closer, how):
    client, server = await pair.connect()
    closing, reading = (client, server) if closer == "client" else (server, client)
    pending = asyncio.create_task(reading.read())
    await asyncio.sleep(0.05)
    assert not pending.done()
    if how == "close":
        await closing.close()
    else:
        closing.abort()
    assert closing.closed()
    with pytest.raises(dc.CommClosedError):
        await asyncio.wait_for(pending, 5)
    with pytest.raises(dc.CommClosedError):
        await asyncio.wait_for(reading.read(), 5)


async def test_abort_fails_a_read_pending_on_the_same_end(pair):
    client, _ = await pair.connect()
    pending = asyncio.create_task(client.read())
    await asyncio.sleep(0.05)
    client.abort()
    with pytest.raises(dc.CommClosedError):
        await asyncio.wait_for(pending, 5)


async def test_messages_written_before_close_are_delivered(pair):
    client, server = await pair.connect()
    for i in range(50):
        await client.write(i)
    await client.close()
    assert [await server.read() for _ in range(50)] == list(range(50))
    with pytest.raises(dc.CommClosedError):
        await asyncio.wait_for(server.read(), 5)


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_reading_or_writing_a_closed_comm_is_comm_closed(pair, how):
    client, _ = await pair.connect()
    if how == "close":
        await client.close()
    else:
        client.abort()
    assert client.closed()
    with pytest.raises(dc.CommClosedError):
        await client.read()
    with pytest.raises(dc.CommClosedError):
        await client.write("too late")
    await client.close()  # closing twice is harmless
    client.abort()


async def test_peer_closed_comm_becomes_closed_and_refuses_writes(pair):
    client, server = await pair.connect()
    await server.close()
    with pytest.raises(dc.CommClosedError):
        await asyncio.wait_for(client.read(), 5)
    assert client.closed()
    with pytest.raises(dc.CommClosedError):
        for _ in range(100):  # a socket may take a write or two to notice
            await client.write(b"x" * 10_000)
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("side", ["listener", "connector"])
async def test_deserialize_false_keeps_serialize_wrapped(transport, side):
    pair = Pair(transport, deserialize=side != "listener")
    await pair.listener.start()
    try:
        client, server = await pair.connect(deserialize=side != "connector")
        sender, receiver = (client, server) if side == "listener" else (server, client)
        payload = {"n": 7, "items": (1, 2)}
        await sender.write({"s": to_serialize(payload), "p": ToPickle(payload)})
        got = await receiver.read()
        assert isinstance(got["s"], (Serialize, Serialized))
        assert unwrap(got["s"]) == payload
        assert got["p"] == payload  # ToPickle is always unwrapped
        await receiver.write({"s": to_serialize(payload)})
        assert (await sender.read())["s"] == payload  # the other end deserializes
    finally:
        pair.listener.stop()


async def test_listener_stop_refuses_new_comms_and_keeps_open_ones(pair):
    client, server = await pair.connect()
    pair.listener.stop()
    with pytest.raises(OSError):
        await dc.connect(
            pair.listener.contact_address, timeout=0.5, **pair.transport.connect_kwargs
        )
    await client.write("still open")
    assert await server.read() == "still open"
    await server.write("both ways")
    assert await client.read() == "both ways"


async def test_async_with_listener(transport):
    async with dc.listen(transport.listen_address, echo, **transport.listen_kwargs) as listener:
        comm = await dc.connect(listener.contact_address, **transport.connect_kwargs)
        await comm.write("hi")
        assert await comm.read() == "hi"
        await comm.close()
    with pytest.raises(OSError):
        await dc.connect(listener.contact_address, timeout=0.5, **transport.connect_kwargs)


async def test_await_listener_starts_it(transport):
    listener = dc.listen(transport.listen_address, echo, **transport.listen_kwargs)
    assert await listener is listener
    try:
        comm = await dc.connect(listener.contact_address, **transport.connect_kwargs)
        await comm.write("hi")
        assert await comm.read() == "hi"
    finally:
        listener.stop()


async def test_sync_handler(transport):
    seen = []
    async with dc.listen(transport.listen_address, seen.append, **transport.listen_kwargs) as lst:
        comm = await dc.connect(lst.contact_address, **transport.connect_kwargs)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert len(seen) == 1 and seen[0].peer_address == comm.local_address
        await comm.write("to a sync handler's comm")
        assert await seen[0].read() == "to a sync handler's comm"


async def echo(comm):
    try:
        while True:
            await comm.write(await comm.read())
    except dc.CommClosedError:
        pass
