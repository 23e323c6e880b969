"""dc+tcp / dc+tls comms as distributed sees them, checked against its own tcp / tls.

Everything goes through distributed's own ``connect`` / ``listen`` and entry
point lookup, as a dask cluster would use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import pickle
import subprocess
import sys
import threading
import time

import dask.config
import numpy as np
import pytest
from distributed.comm import connect, listen
from distributed.comm import core as stock_core
from distributed.comm import registry as stock_registry
from distributed.protocol import Serialized, ToPickle, to_serialize

import distributed_comm
from distributed_comm import interop, tcp

OURS = ("dc+tcp", "dc+tls")


def _args(scheme: str, security) -> tuple[dict, dict]:
    """(listen kwargs, connect kwargs) as a dask Server / rpc would pass them."""
    if scheme.endswith("tls"):
        return security.get_listen_args("scheduler"), security.get_connection_args("client")
    return {}, {}


@contextlib.asynccontextmanager
async def comm_pair(scheme: str, security=None, deserialize: bool = True, **listen_kwargs):
    """(client comm, server comm) connected through distributed's connect/listen."""
    accepted: asyncio.Queue = asyncio.Queue()
    listen_args, connect_args = _args(scheme, security)
    listener = listen(
        f"{scheme}://127.0.0.1:0",
        accepted.put,
        deserialize=deserialize,
        **listen_args,
        **listen_kwargs,
    )
    async with listener:
        client = await connect(listener.contact_address, timeout=5, **connect_args)
        server = await asyncio.wait_for(accepted.get(), 5)
        try:
            yield client, server
        finally:
            await client.close()
            await server.close()


async def deliver(scheme: str, msg, security=None, deserialize: bool = True):
    async with comm_pair(scheme, security, deserialize) as (client, server):
        await client.write(msg)
        return await asyncio.wait_for(server.read(), 10)


def typed(obj):
    """*obj* with the type of every container and leaf spelled out, for comparing deliveries."""
    if isinstance(obj, dict):
        return ("dict", sorted((repr(k), typed(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple, set)):
        return (type(obj).__name__, [typed(item) for item in obj])
    if isinstance(obj, np.ndarray):
        return ("ndarray", obj.dtype.str, obj.shape, obj.tobytes())
    if isinstance(obj, Serialized):
        return ("Serialized", typed(obj.header), [bytes(frame) for frame in obj.frames])
    return (type(obj).__name__, obj)


def _thread_name() -> str:
    return threading.current_thread().name


class WhereDeserialized:
    """Unpickles into the name of the thread that unpickled it."""

    def __reduce__(self):
        return (_thread_name, ())


# -- registration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme, backend_class", [("dc+tcp", interop.DCTCPBackend), ("dc+tls", interop.DCTLSBackend)]
)
def test_entry_points_resolve_through_distributed(scheme, backend_class):
    (entry_point,) = importlib.metadata.entry_points(group="distributed.comm.backends", name=scheme)
    assert entry_point.load() is backend_class
    backend = stock_registry.get_backend(scheme)
    assert isinstance(backend, backend_class)
    assert isinstance(backend, stock_registry.Backend)
    assert backend.get_address_host_port("127.0.0.1:8786") == ("127.0.0.1", 8786)
    assert backend.resolve_address("localhost:1") == "127.0.0.1:1"


def test_import_distributed_comm_does_not_import_distributed():
    code = "import sys, distributed_comm; print(sorted({'dask', 'distributed'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


def test_interop_without_distributed_says_how_to_fix():
    code = (
        "import sys; sys.modules['distributed'] = None\n"
        "try:\n    import distributed_comm.interop\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install distributed" in out.stdout


# -- what distributed reads from comms and listeners -----------------------------------------


@pytest.mark.parametrize("scheme", OURS)
async def test_comm_has_everything_distributed_reads(scheme, security):
    async with comm_pair(scheme, security) as (client, server):
        for comm, comm_class in ((client, tcp.TCP), (server, tcp.TCP)):
            assert isinstance(comm, stock_core.Comm)
            assert isinstance(comm, comm_class)  # our transport underneath
            assert comm in stock_core.Comm._instances
            assert comm._local_addr == comm.local_address
            assert comm._peer_addr == comm.peer_address
            assert comm.local_address.startswith(f"{scheme}://127.0.0.1:")
            assert comm.local_info["address"] == comm.local_address
            assert comm.remote_info["address"] == comm.peer_address
            assert comm.remote_info["pickle-protocol"] == pickle.HIGHEST_PROTOCOL
            assert comm.handshake_options == {
                "pickle-protocol": pickle.HIGHEST_PROTOCOL,
                "compression": None,
            }
            assert comm.allow_offload is True
            assert comm.name is None
            assert comm.same_host
            assert comm.max_shard_size == 64 * 2**20
            assert not comm.closed()
        assert client.peer_address == server.local_address
        assert server.peer_address == client.local_address
        if scheme == "dc+tls":
            assert client.extra_info["peercert"]["subject"]
            assert len(client.extra_info["cipher"]) == 3
        else:
            assert client.extra_info == {}
    assert client.closed() and server.closed()


@pytest.mark.parametrize("scheme", OURS)
async def test_listener_has_everything_distributed_reads(scheme, security):
    listen_args, _ = _args(scheme, security)
    listener = listen(
        f"{scheme}://127.0.0.1:0", lambda comm: None, allow_offload=False, **listen_args
    )
    assert isinstance(listener, stock_core.BaseListener)
    assert listener.prefix == f"{scheme}://"
    async with listener:
        assert listener.listen_address.startswith(f"{scheme}://127.0.0.1:")
        assert listener.contact_address == listener.listen_address
        comm = await connect(listener.contact_address, timeout=5, **_args(scheme, security)[1])
        await comm.close()


async def test_listener_passes_allow_offload_to_comms():
    async with comm_pair("dc+tcp", allow_offload=False) as (_, server):
        assert server.allow_offload is False


async def test_shard_size_follows_dask_config():
    with dask.config.set({"distributed.comm.shard": "1MiB"}):
        async with comm_pair("dc+tcp", deserialize=False) as (client, server):
            assert client.max_shard_size == 2**20
            data = np.arange(3 * 2**20 // 8, dtype="f8")
            await client.write({"x": to_serialize(data)})
            received = await server.read()
    header = received["x"].header
    assert header["split-num-sub-frames"] == (3,)
    assert all(len(frame) <= 2**20 for frame in received["x"].frames)


# -- messages behave as on distributed's own tcp / tls ----------------------------------------

MESSAGES = {
    "plain": {"op": "x", "list": [1, [2, 3]], "set": {1, 2}, "bytes": b"\x00" * 10, "n": None},
    "serialize": {"op": "x", "data": to_serialize(np.arange(12).reshape(3, 4))},
    "serialize-big": {"data": to_serialize(np.arange(2**20, dtype="i8"))},
    "topickle": {"op": "x", "obj": ToPickle(np.float32(1.5)), "k": ToPickle((1, {"a"}))},
    "fallback-pickle": {"op": "x", "obj": complex(1, 2)},
}


@pytest.mark.parametrize("name", MESSAGES)
@pytest.mark.parametrize("deserialize", [True, False])
@pytest.mark.parametrize("pair", [("tcp", "dc+tcp"), ("tls", "dc+tls")])
async def test_delivery_matches_stock(pair, name, deserialize, security):
    stock, ours = pair
    expected = await deliver(stock, MESSAGES[name], security, deserialize)
    got = await deliver(ours, MESSAGES[name], security, deserialize)
    assert typed(got) == typed(expected)


async def test_pickled_function_arrives_callable():
    got = await deliver("dc+tcp", {"f": ToPickle(lambda x: x * 3 + 1)})
    assert got["f"](2) == 7


async def test_serialized_passes_through_an_undeserializing_hop():
    """The scheduler (deserialize=False) forwards data it never unpickles."""
    data = np.random.default_rng(0).random(100_000)
    async with comm_pair("dc+tcp", deserialize=False) as (client, scheduler_side):
        await client.write({"data": to_serialize(data), "f": to_serialize(WhereDeserialized())})
        held = await scheduler_side.read()
        assert isinstance(held["data"], Serialized)
        assert isinstance(held["f"], Serialized)  # never unpickled on this hop
        async with comm_pair("dc+tcp") as (scheduler_out, worker_side):
            await scheduler_out.write(held)
            got = await worker_side.read()
    np.testing.assert_array_equal(got["data"], data)
    assert got["f"] == "MainThread"


@pytest.mark.parametrize("size", [1000, 11 * 2**20])
async def test_offloads_where_distributed_does(size):
    """Large messages are deserialized on distributed's offload thread, small ones inline."""
    msg = {"where": to_serialize(WhereDeserialized()), "pad": to_serialize(np.zeros(size, "u1"))}
    stock = await deliver("tcp", msg)
    ours = await deliver("dc+tcp", msg)
    assert ours["where"] == stock["where"]
    assert (ours["where"] == "MainThread") == (size < 2**20)


@pytest.mark.parametrize("listen_scheme, connect_scheme", [("dc+tcp", "tcp"), ("tcp", "dc+tcp")])
async def test_same_bytes_as_stock_tcp_on_the_wire(listen_scheme, connect_scheme):
    """dc+tcp differs from tcp only in the process: each end can be either."""
    accepted: asyncio.Queue = asyncio.Queue()
    data = np.arange(3_000_000, dtype="i4")  # large enough to travel outside the head
    async with listen(f"{listen_scheme}://127.0.0.1:0", accepted.put) as listener:
        port = listener.contact_address.rsplit(":", 1)[1]
        client = await connect(f"{connect_scheme}://127.0.0.1:{port}", timeout=5)
        server = await asyncio.wait_for(accepted.get(), 5)
        try:
            await client.write({"op": "ping", "data": to_serialize(data)})
            got = await server.read()
            await server.write({"op": "pong", "back": to_serialize(got["data"][::-1])})
            back = await client.read()
        finally:
            await client.close()
            await server.close()
    assert got["op"] == "ping"
    np.testing.assert_array_equal(got["data"], data)
    np.testing.assert_array_equal(back["back"], data[::-1])


# -- failures raise what distributed catches -----------------------------------------------------


async def test_peer_closing_raises_both_libraries_closed_error():
    async with comm_pair("dc+tcp") as (client, server):
        server.abort()
        with pytest.raises(stock_core.CommClosedError) as info:
            await asyncio.wait_for(client.read(), 5)
        assert isinstance(info.value, distributed_comm.CommClosedError)
        with pytest.raises(stock_core.CommClosedError):
            await client.write({"op": "x"})


async def test_garbage_peer_fails_handshake_promptly():
    async def babble(reader, writer):
        writer.write(b"\xff" * 64)
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(babble, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(stock_core.CommClosedError):
            await asyncio.wait_for(connect(f"dc+tcp://127.0.0.1:{port}", timeout=5), 10)


async def test_untrusted_certificate_is_fatal_not_retried(security, untrusted_security):
    listen_args, _ = _args("dc+tls", security)
    async with listen("dc+tls://127.0.0.1:0", lambda comm: None, **listen_args) as listener:
        start = time.monotonic()
        with pytest.raises(stock_core.FatalCommClosedError):
            await connect(
                listener.contact_address,
                timeout=20,
                **untrusted_security.get_connection_args("client"),
            )
        assert time.monotonic() - start < 5


@pytest.mark.parametrize("scheme", ["tcp", "dc+tcp"])
async def test_require_encryption_refuses_plain_tcp(scheme):
    with pytest.raises(RuntimeError, match="encryption required"):
        listen(f"{scheme}://127.0.0.1:0", lambda comm: None, require_encryption=True)
    with pytest.raises(RuntimeError, match="encryption required"):
        await connect(f"{scheme}://127.0.0.1:1", timeout=1, require_encryption=True)


async def test_tls_without_context_is_refused_like_stock():
    for scheme in ("tls", "dc+tls"):
        with pytest.raises(TypeError, match="ssl_context"):
            listen(f"{scheme}://127.0.0.1:0", lambda comm: None)


# -- install() / uninstall() ---------------------------------------------------------------------


async def test_install_serves_tcp_and_tls_with_our_transport(security):
    originals = dict(stock_registry.backends)
    interop.install()
    try:
        interop.install()  # twice is harmless: uninstall still restores the originals
        assert isinstance(stock_registry.get_backend("tcp"), interop.TCPBackend)
        assert isinstance(stock_registry.get_backend("tls"), interop.TLSBackend)
        for scheme, comm_class in (("tcp", interop.TCP), ("tls", interop.TLS)):
            async with comm_pair(scheme, security) as (client, server):
                assert type(client) is comm_class and type(server) is comm_class
                assert client.local_address.startswith(f"{scheme}://")
                await client.write({"x": to_serialize(np.arange(5))})
                np.testing.assert_array_equal((await server.read())["x"], np.arange(5))
    finally:
        interop.uninstall()
    assert stock_registry.backends == originals


def test_install_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="'udp'"):
        interop.install(("tcp", "udp"))
    assert not isinstance(stock_registry.get_backend("tcp"), interop.TCPBackend)
