"""unix:// specifics: the socket file's life cycle and permissions, addresses.

What every comm does (echo, close, handshake...) is covered for unix by
tests/test_comm_behaviour.py.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat

import numpy as np
import pytest

import distributed_comm as dc
from distributed_comm import tcp, unix
from distributed_comm.protocol import to_serialize


async def echo(comm):
    try:
        while True:
            await comm.write(await comm.read())
    except dc.CommClosedError:
        pass


async def round_trip(address: str, message="ping"):
    comm = await dc.connect(address, timeout=5)
    try:
        await comm.write(message)
        return await comm.read()
    finally:
        await comm.close()


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_fresh_address_is_an_owner_only_socket_in_a_private_dir_removed_on_stop():
    listener = await dc.listen("unix://", echo)
    path = listener.contact_address.removeprefix("unix://")
    directory = os.path.dirname(path)
    try:
        assert listener.listen_address == listener.contact_address == "unix://" + path
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert mode(path) == 0o600
        assert mode(directory) == 0o700
        assert await round_trip(listener.contact_address) == "ping"
    finally:
        listener.stop()
    assert not os.path.exists(path)
    assert not os.path.exists(directory)


async def test_two_fresh_listeners_get_different_sockets():
    async with dc.listen("unix://", echo) as one, dc.listen("unix://", echo) as two:
        assert one.contact_address != two.contact_address
        assert await round_trip(two.contact_address, "two") == "two"


async def test_given_path_is_owner_only_and_removed_on_stop(tmp_path):
    path = tmp_path / "worker.sock"
    async with dc.listen(f"unix://{path}", echo) as listener:
        assert listener.contact_address == f"unix://{path}"
        assert mode(path) == 0o600
        assert await round_trip(listener.contact_address) == "ping"
    assert not path.exists()
    assert tmp_path.exists()  # the directory is the user's: left alone


async def test_relative_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with dc.listen("unix://relative.sock", echo) as listener:
        assert listener.contact_address == f"unix://{tmp_path / 'relative.sock'}"
        monkeypatch.chdir("/")  # peers elsewhere still reach it
        assert await round_trip(listener.contact_address) == "ping"


async def test_stale_socket_file_of_a_dead_listener_is_replaced(tmp_path):
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.listen(1)
    dead.close()  # the file stays behind, nobody answers on it
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    async with dc.listen(f"unix://{path}", echo) as listener:
        assert await round_trip(listener.contact_address) == "ping"


async def test_live_socket_file_is_refused_and_left_working(tmp_path):
    path = tmp_path / "live.sock"
    async with dc.listen(f"unix://{path}", echo) as first:
        second = dc.listen(f"unix://{path}", echo)
        with pytest.raises(OSError, match="live listener") as info:
            await second.start()
        assert info.value.errno == errno.EADDRINUSE
        assert str(path) in str(info.value)
        second.stop()  # stopping the refused listener must not remove the live file
        assert await round_trip(first.contact_address) == "ping"


async def test_live_but_busy_listener_is_refused_without_blocking(tmp_path):
    path = tmp_path / "busy.sock"
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(str(path))
    busy.listen(0)  # never accepts: its backlog fills up
    waiting = []
    try:
        while True:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            waiting.append(client)
            try:
                client.connect(str(path))
            except BlockingIOError:
                break
        with pytest.raises(OSError, match="live listener"):
            await dc.listen(f"unix://{path}", echo).start()
    finally:
        for sock in [busy, *waiting]:
            sock.close()


async def test_other_file_at_the_path_is_refused_untouched(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("precious")
    with pytest.raises(FileExistsError, match="not a unix socket") as info:
        await dc.listen(f"unix://{path}", echo).start()
    assert str(path) in str(info.value)
    assert path.read_text() == "precious"


async def test_stop_leaves_a_socket_file_that_replaced_ours(tmp_path):
    path = tmp_path / "shared.sock"
    first = await dc.listen(f"unix://{path}", echo)
    os.unlink(path)  # someone removed our file and...
    async with dc.listen(f"unix://{path}", echo) as second:  # ...started a listener there
        first.stop()
        assert path.exists()
        assert await round_trip(second.contact_address) == "ping"


async def test_path_too_long_is_a_clear_error_on_both_sides(tmp_path):
    path = "/tmp/" + "x" * (unix.MAX_PATH_BYTES - len("/tmp/") + 1)
    with pytest.raises(ValueError, match="limit is") as info:
        dc.listen(f"unix://{path}", echo)
    assert path in str(info.value)
    with pytest.raises(ValueError, match="limit is") as info:
        await dc.connect(f"unix://{path}", timeout=5)
    assert path in str(info.value)
    longest = tmp_path / ("y" * (unix.MAX_PATH_BYTES - len(str(tmp_path)) - 1))
    async with dc.listen(f"unix://{longest}", echo) as listener:  # the limit itself is fine
        assert await round_trip(listener.contact_address) == "ping"


async def test_connect_to_a_missing_socket_fails_with_oserror(tmp_path):
    with pytest.raises(OSError, match="Timed out"):
        await dc.connect(f"unix://{tmp_path / 'nobody.sock'}", timeout=0.2)
    with pytest.raises(ValueError, match="needs a path"):
        await dc.connect("unix://", timeout=5)


def test_address_helpers():
    address = "unix:///run/dask/worker.sock"
    assert dc.resolve_address(address) == address
    assert dc.get_address_host(address) == dc.get_address_host("unix://")
    host = dc.get_address_host(address)
    socket.inet_aton(host)  # an IPv4 address: the machine's, as tcp/inproc name it
    with pytest.raises(ValueError, match="worker.sock"):
        dc.get_address_host_port(address)
    assert dc.get_local_address_for(address) == "unix://"
    assert dc.normalize_address(address) == address


async def test_comm_addresses_and_large_array(tmp_path):
    path = tmp_path / "big.sock"
    accepted: asyncio.Queue = asyncio.Queue()
    async with dc.listen(f"unix://{path}", accepted.put) as listener:
        client = await dc.connect(listener.contact_address)
        server = await asyncio.wait_for(accepted.get(), 5)
        assert client.peer_address == server.local_address == f"unix://{path}"
        assert client.local_address == server.peer_address == "unix://"  # unnamed client socket
        assert client.same_host and server.same_host
        with pytest.raises(ValueError, match="no host and port"):
            listener.get_host_port()
        array = np.random.default_rng(0).integers(0, 255, 48 * 2**20, dtype="u1")
        await client.write({"a": to_serialize(array)})
        got = (await server.read())["a"]
        np.testing.assert_array_equal(got, array)
        assert got.flags.writeable
        await client.close()


async def test_both_ends_may_have_more_in_flight_than_the_default(tmp_path):
    """A large message over the default send buffer (~200 KiB) wakes each side
    every 200 KiB; both ends get what a socket asking for _UNIX_SEND_BUFFER gets."""
    with socket.socket(socket.AF_UNIX) as reference:
        default = reference.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        reference.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, tcp._UNIX_SEND_BUFFER)
        granted = reference.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    accepted: asyncio.Queue = asyncio.Queue()
    async with dc.listen(f"unix://{tmp_path / 'buf.sock'}", accepted.put) as listener:
        client = await dc.connect(listener.contact_address)
        server = await asyncio.wait_for(accepted.get(), 5)
        for comm in (client, server):
            assert comm.stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == granted
        assert granted >= default
        await client.close()
        await server.close()
