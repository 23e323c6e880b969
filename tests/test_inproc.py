"""inproc://: in-process comms, on one event loop and across threads.

Transport-independent behaviour lives in test_comm_behaviour.py; this module
covers what only inproc has (threads, addresses of this process, references).
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time

import numpy as np
import pytest

import distributed_comm as dc
from distributed_comm import config
from distributed_comm.inproc import global_manager, new_address
from distributed_comm.protocol import Serialize, ToPickle, to_serialize

their_comm = pytest.importorskip("distributed.comm")


@pytest.fixture
def other_loop():
    """An event loop running in another thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    if not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def run_on(loop, coro):
    """Await *coro* running on *loop* (another thread)."""
    return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


async def echo(comm):
    try:
        while True:
            await comm.write(await comm.read())
    except dc.CommClosedError:
        pass


async def start_listener(handler, loop=None, addr="inproc://", **kwargs):
    """A started listener whose event loop is *loop* (default: this one)."""

    async def start():
        return await dc.listen(addr, handler, **kwargs)

    return await (start() if loop is None else run_on(loop, start()))


def server_comms(loop=None):
    """A handler that hands server-side comms to an asyncio.Queue of this loop."""
    here = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def handler(comm):
        here.call_soon_threadsafe(queue.put_nowait, comm)

    return handler, queue


@pytest.fixture(params=["same-loop", "cross-thread"])
def server_loop(request, other_loop):
    """None for the test's own loop, else a loop in another thread."""
    return None if request.param == "same-loop" else other_loop


async def test_echo_hands_objects_over_by_reference(server_loop):
    listener = await start_listener(echo, server_loop)
    comm = await dc.connect(listener.contact_address)
    array = np.arange(10)
    payload = {"op": "data", "array": array, "nested": [{"x": array}]}
    await comm.write(payload)
    got = await comm.read()
    assert got["array"] is array and got["nested"][0]["x"] is array
    assert got["op"] == "data" and isinstance(got["nested"], list)
    await comm.close()
    listener.stop()


async def test_handler_runs_on_the_listeners_thread(other_loop):
    threads = []

    async def handler(comm):
        threads.append(threading.get_ident())
        await comm.write("hello")

    listener = await start_listener(handler, other_loop)
    comm = await dc.connect(listener.contact_address)
    assert await comm.read() == "hello"
    assert threads and threads[0] != threading.get_ident()
    await comm.close()


async def test_ten_thousand_messages_arrive_in_order_both_ways(server_loop):
    n = 10_000
    listener = await start_listener(echo, server_loop)
    comm = await dc.connect(listener.contact_address)

    async def send():
        for i in range(n):
            await comm.write({"i": i})

    sender = asyncio.create_task(send())
    received = [(await comm.read())["i"] for _ in range(n)]
    await sender
    assert received == list(range(n))
    await comm.close()


async def test_serialize_and_topickle_are_unwrapped_only_when_deserializing():
    handler, accepted = server_comms()
    listener = await start_listener(handler, deserialize=False)
    comm = await dc.connect(listener.contact_address)
    server = await accepted.get()
    data = object()
    await comm.write({"s": to_serialize(data), "p": ToPickle(data)})
    got = await server.read()
    assert isinstance(got["s"], Serialize) and got["s"].data is data
    assert got["p"] is data
    await server.write({"s": to_serialize(data)})
    assert (await comm.read())["s"] is data
    await comm.close()


async def test_many_listeners_each_reach_their_own_handler():
    listeners = []
    for i in range(50):

        async def handler(comm, i=i):
            await comm.write(i)

        listeners.append(await start_listener(handler))
    assert len({listener.contact_address for listener in listeners}) == 50
    comms = await asyncio.gather(*(dc.connect(lst.contact_address) for lst in listeners))
    assert [await comm.read() for comm in comms] == list(range(50))
    for listener, comm in zip(listeners, comms, strict=True):
        listener.stop()
        await comm.close()


async def test_listen_on_a_given_address_and_refuse_a_taken_one():
    addr = new_address()
    listener = await start_listener(echo, addr=addr)
    assert listener.listen_address == listener.contact_address == addr
    with pytest.raises(RuntimeError, match="already listening"):
        await start_listener(echo, addr=addr)
    listener.stop()
    again = await start_listener(echo, addr=addr)  # free again after stop()
    again.stop()


async def test_missing_listener_is_an_oserror_after_the_connect_timeout():
    start = time.monotonic()
    with pytest.raises(OSError, match="Timed out"):
        await dc.connect(new_address(), timeout=0.3)
    assert 0.3 <= time.monotonic() - start < 2


@pytest.mark.parametrize(
    "loc",
    [
        f"10.255.255.1/{os.getpid()}/1",  # another host
        f"{global_manager.ip}/{os.getpid() + 1}/1",  # another process
        "not-an-inproc-address",
        f"{global_manager.ip}/pid/1",
    ],
)
async def test_foreign_or_malformed_address_is_a_value_error_at_once(loc):
    start = time.monotonic()
    with pytest.raises(ValueError, match=loc):
        await dc.connect("inproc://" + loc, timeout=5)
    with pytest.raises(ValueError, match=loc):
        dc.listen("inproc://" + loc, echo)
    assert time.monotonic() - start < 1


@pytest.mark.parametrize("closer", ["client", "server"])
@pytest.mark.parametrize("how", ["close", "abort"])
async def test_closing_either_end_fails_pending_reads_on_both(server_loop, closer, how):
    handler, accepted = server_comms()
    listener = await start_listener(handler, server_loop)
    client = await dc.connect(listener.contact_address)
    server = await accepted.get()

    async def read_twice(comm):
        """A read pending when the close happens, and one after."""
        with pytest.raises(dc.CommClosedError):
            await comm.read()
        with pytest.raises(dc.CommClosedError):
            await comm.read()
        return comm.closed()

    async def close(comm):
        await asyncio.sleep(0.05)
        if how == "close":
            await comm.close()
        else:
            comm.abort()
        return comm.closed()

    def on_server(coro):
        return coro if server_loop is None else run_on(server_loop, coro)

    if closer == "client":
        results = await asyncio.gather(on_server(read_twice(server)), close(client))
    else:
        results = await asyncio.gather(read_twice(client), on_server(close(server)))
    assert results == [True, True]
    with pytest.raises(dc.CommClosedError):
        await client.write("late")


async def test_abort_fails_a_read_pending_on_the_same_end():
    listener = await start_listener(echo)
    comm = await dc.connect(listener.contact_address)
    pending = asyncio.create_task(comm.read())
    await asyncio.sleep(0.01)
    comm.abort()
    with pytest.raises(dc.CommClosedError):
        await asyncio.wait_for(pending, 5)


async def test_messages_sent_before_close_are_read_before_end_of_stream(server_loop):
    handler, accepted = server_comms()
    listener = await start_listener(handler, server_loop)
    client = await dc.connect(listener.contact_address)
    server = await accepted.get()
    for i in range(100):
        await client.write(i)
    await client.close()

    async def drain():
        got = []
        while True:
            try:
                got.append(await server.read())
            except dc.CommClosedError:
                return got

    got = await (drain() if server_loop is None else run_on(server_loop, drain()))
    assert got == list(range(100))


async def test_a_cancelled_read_loses_no_message():
    handler, accepted = server_comms()
    listener = await start_listener(handler)
    client = await dc.connect(listener.contact_address)
    server = await accepted.get()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(client.read(), 0.05)
    await server.write("after the timeout")
    assert await client.read() == "after the timeout"


async def test_two_concurrent_reads_are_refused():
    listener = await start_listener(echo)
    comm = await dc.connect(listener.contact_address)
    first = asyncio.create_task(comm.read())
    await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError, match="one read"):
        await comm.read()
    await comm.write("x")
    assert await first == "x"


async def test_many_concurrent_handshakes(server_loop):
    listener = await start_listener(echo, server_loop)
    comms = await asyncio.gather(*(dc.connect(listener.contact_address) for _ in range(300)))
    assert len({comm.local_address for comm in comms}) == 300
    for i, comm in enumerate(comms):
        await comm.write(i)
    assert [await comm.read() for comm in comms] == list(range(300))
    for comm in comms:
        await comm.close()


async def test_listener_keeps_listening_after_failed_handshakes():
    handled = []

    async def handler(comm):
        handled.append(comm)
        await comm.write("welcome")

    listener = await start_listener(handler)
    connector = dc.get_backend("inproc").get_connector()
    loc = listener.contact_address[len("inproc://") :]

    dropped = await connector.connect(loc)  # leaves before its handshake
    dropped.abort()
    garbage = await connector.connect(loc)  # a handshake that is not a map
    await garbage.write("not a handshake")
    assert isinstance(await garbage.read(), dict)  # the listener's own handshake
    with pytest.raises(dc.CommClosedError):
        await garbage.read()

    comm = await dc.connect(listener.contact_address)
    assert await comm.read() == "welcome"
    assert len(handled) == 1


async def test_silent_peer_is_dropped_after_the_handshake_timeout():
    handled = []
    listener = await start_listener(handled.append)
    connector = dc.get_backend("inproc").get_connector()
    with config.set({"distributed.comm.timeouts.handshake": "200ms"}):
        silent = await connector.connect(listener.contact_address[len("inproc://") :])
        await silent.read()  # the listener's handshake; ours never comes
        start = time.monotonic()
        with pytest.raises(dc.CommClosedError):
            await asyncio.wait_for(silent.read(), 5)
    assert time.monotonic() - start < 2
    assert handled == []


async def test_stop_refuses_new_connections_but_open_comms_keep_working(server_loop):
    listener = await start_listener(echo, server_loop)
    comm = await dc.connect(listener.contact_address)
    await comm.write("handshake done on both ends")
    assert await comm.read() == "handshake done on both ends"
    if server_loop is None:
        listener.stop()
    else:
        server_loop.call_soon_threadsafe(listener.stop)
    with pytest.raises(OSError):
        await dc.connect(listener.contact_address, timeout=0.2)
    await comm.write("still here")
    assert await comm.read() == "still here"


async def test_dropping_a_comm_without_closing_ends_the_peers_stream():
    handler, accepted = server_comms()
    listener = await start_listener(handler)
    client = await dc.connect(listener.contact_address)
    server = await accepted.get()
    pending = asyncio.create_task(server.read())
    await asyncio.sleep(0.01)
    del client
    gc.collect()
    with pytest.raises(dc.CommClosedError):
        await asyncio.wait_for(pending, 5)


async def test_writing_to_a_peer_whose_loop_is_gone_is_comm_closed(other_loop):
    kept = []  # a server end that is garbage collected would end the stream by itself
    listener = await start_listener(kept.append, other_loop)
    comm = await dc.connect(listener.contact_address)
    other_loop.call_soon_threadsafe(other_loop.stop)
    while other_loop.is_running():
        await asyncio.sleep(0.01)
    other_loop.close()
    with pytest.raises(dc.CommClosedError, match="event loop is closed"):
        await comm.write("anyone?")
    assert comm.closed()


async def test_connecting_to_a_listener_whose_loop_is_gone_is_an_oserror(other_loop):
    listener = await start_listener(echo, other_loop)
    other_loop.call_soon_threadsafe(other_loop.stop)
    while other_loop.is_running():
        await asyncio.sleep(0.01)
    other_loop.close()
    with pytest.raises(OSError):
        await dc.connect(listener.contact_address, timeout=0.2)


# --- Addresses, checked against distributed.comm -------------------------------------


def this_process_addresses():
    return [new_address(), their_comm.inproc.new_address()]


@pytest.mark.parametrize("func", ["get_address_host", "resolve_address", "normalize_address"])
@pytest.mark.parametrize("which", ["ours", "theirs"])
def test_address_functions_match_distributed(func, which):
    addr = this_process_addresses()[which == "theirs"]
    assert getattr(dc, func)(addr) == getattr(their_comm, func)(addr)


def test_our_host_ip_is_distributeds():
    ip, pid, _ = new_address()[len("inproc://") :].split("/")
    assert ip == global_manager.ip == their_comm.inproc.global_manager.ip
    assert int(pid) == os.getpid()


def test_local_address_for_is_a_fresh_address_of_this_process():
    addr = new_address()
    mine, theirs = dc.get_local_address_for(addr), their_comm.get_local_address_for(addr)
    assert mine.rsplit("/", 1)[0] == theirs.rsplit("/", 1)[0] == addr.rsplit("/", 1)[0]
    assert mine != addr and mine != dc.get_local_address_for(addr)


@pytest.mark.parametrize(
    "func", ["get_address_host", "get_local_address_for", "get_address_host_port"]
)
def test_address_errors_match_distributed(func):
    for addr in (f"inproc://{global_manager.ip}/{os.getpid() + 1}/1", new_address()):
        try:
            expected = getattr(their_comm, func)(addr)
        except ValueError:
            with pytest.raises(ValueError, match="inproc"):
                getattr(dc, func)(addr)
        else:
            assert type(getattr(dc, func)(addr)) is type(expected)
