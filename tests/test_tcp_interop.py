"""On the wire with a stock ``distributed.comm``: our connect to their listen and
their connect to our listen, over tcp and tls, with the protocol message corpus
going both ways and the handshake checked on both ends."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import trustme
from test_protocol_interop import CASES, allow_uuid_enums, assert_same  # noqa: F401

import distributed_comm as ours
import distributed_comm.protocol as our_protocol

theirs = pytest.importorskip("distributed.comm")
their_protocol = pytest.importorskip("distributed.protocol")

WIRE_CASES = {name: c for name, c in CASES.items() if not c[2]}


@pytest.fixture(scope="module")
def contexts():
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    for context in (server, client):
        cert.configure_cert(context)
        ca.configure_trust(context)
    return server, client


def kwargs(scheme, contexts, side):
    if scheme == "tcp":
        return {}
    return {"ssl_context": contexts[0] if side == "server" else contexts[1]}


def check_handshake(comm, scheme):
    for info in (comm.local_info, comm.remote_info):
        assert info["pickle-protocol"] == 5
        assert info["compression"] is None  # same host: never compressed
        assert tuple(info["python"])[:2] == (3, 11) or len(info["python"]) == 3
    assert comm.local_info["address"] == comm.local_address
    assert comm.remote_info["address"] == comm.peer_address
    assert comm.handshake_options == {"pickle-protocol": 5, "compression": None}
    assert comm.peer_address.startswith(f"{scheme}://")


async def exchange(client, server_side, client_module, server_module):
    """Every corpus message client -> server and server -> client, each built with
    the sending side's own marker classes and checked against the expected value."""
    for name, (make, expected, _) in WIRE_CASES.items():
        await client.write(make(client_module))
        assert_same(await server_side.read(), expected, f"to server: {name}")
        await server_side.write(make(server_module))
        assert_same(await client.read(), expected, f"to client: {name}")


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
async def test_our_connect_to_their_listen(scheme, contexts):
    accepted = asyncio.Queue()
    listener = await theirs.listen(
        f"{scheme}://127.0.0.1:0", accepted.put, **kwargs(scheme, contexts, "server")
    )
    try:
        client = await ours.connect(listener.contact_address, **kwargs(scheme, contexts, "client"))
        server_side = await asyncio.wait_for(accepted.get(), 10)
        check_handshake(client, scheme)
        check_handshake(server_side, scheme)
        assert server_side.peer_address == client.local_address
        if scheme == "tls":
            assert client.extra_info["peercert"] and client.extra_info["cipher"]
        await exchange(client, server_side, our_protocol, their_protocol)
        await client.close()
        with pytest.raises(theirs.CommClosedError):
            await asyncio.wait_for(server_side.read(), 10)
    finally:
        listener.stop()


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
async def test_their_connect_to_our_listen(scheme, contexts):
    accepted = asyncio.Queue()
    listener = await ours.listen(
        f"{scheme}://127.0.0.1:0", accepted.put, **kwargs(scheme, contexts, "server")
    )
    try:
        client = await theirs.connect(
            listener.contact_address, **kwargs(scheme, contexts, "client")
        )
        server_side = await asyncio.wait_for(accepted.get(), 10)
        check_handshake(client, scheme)
        check_handshake(server_side, scheme)
        assert client.local_address == server_side.peer_address
        await exchange(client, server_side, their_protocol, our_protocol)
        await server_side.close()
        with pytest.raises(theirs.CommClosedError):
            await asyncio.wait_for(client.read(), 10)
    finally:
        listener.stop()
