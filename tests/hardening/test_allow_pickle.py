"""Untrusted peers: ``allow_pickle=False`` (listen/connect option and setting)
refuses every payload whose decoding would unpickle, i.e. run the peer's code."""

from __future__ import annotations

import asyncio
import enum
import logging
import pathlib
import uuid

import numpy as np
import pytest

import distributed_comm as dc
from distributed_comm import config, protocol
from distributed_comm.protocol import (
    PickleNotAllowedError,
    Serialized,
    ToPickle,
    loads_untrusted,
    to_serialize,
)

from .conftest import assert_quiet, assert_serves, echo, hung_up, wire


class Touch:
    """Unpickling this creates a file: proof that the peer's code ran."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


class Color(enum.Enum):
    RED = 1


def forbidden(marker: pathlib.Path) -> dict:
    """One message per way a payload can carry a pickle."""
    return {
        "ToPickle": {"x": ToPickle(Touch(marker))},
        "pickle family": {"x": to_serialize(Touch(marker))},
        "cloudpickle (lambda)": {"x": to_serialize(lambda: marker.touch())},
        "dask family: type-serialized": {"x": to_serialize(np.arange(10))},
        "numpy object array": {"x": to_serialize(np.array([Touch(marker)], dtype=object))},
        "msgpack fallback": {"x": Touch(marker)},
    }


@pytest.mark.parametrize("kind", list(forbidden(pathlib.Path("unused"))))
def test_loads_untrusted_refuses_every_pickle_kind(tmp_path, kind):
    marker = tmp_path / "ran"
    frames = protocol.dumps(forbidden(marker)[kind])
    with pytest.raises(PickleNotAllowedError, match="allow_pickle=False"):
        loads_untrusted(frames)
    assert not marker.exists()
    protocol.loads(frames)  # the trusted path really would have run it
    assert kind.startswith(("cloudpickle", "dask")) or marker.exists()


def test_loads_untrusted_accepts_msgpack_content():
    msg = {"op": "x", "s": {1, 2}, "b": b"raw", "n": (1, 2.5, None), "nested": {"k": "v"}}
    assert loads_untrusted(protocol.dumps(msg)) == msg
    # the msgpack family and Serialized kept as is do not unpickle either
    frames = protocol.dumps({"m": to_serialize({"a": 1})}, serializers=["msgpack"])
    assert loads_untrusted(frames) == {"m": {"a": 1}}
    kept = loads_untrusted(protocol.dumps({"x": to_serialize(np.arange(3))}), deserialize=False)
    assert isinstance(kept["x"], Serialized)


def test_enum_imports_stay_allow_listed_when_untrusted():
    frames = protocol.dumps({"c": Color.RED})  # this test module is not allow-listed
    with pytest.raises(RuntimeError, match="not allowed"):
        loads_untrusted(frames)
    frames = protocol.dumps({"u": uuid.SafeUUID.safe})
    with pytest.raises(RuntimeError, match="'uuid' is not allowed"):
        loads_untrusted(frames)


def test_refusal_does_not_leak_into_later_trusted_loads():
    with pytest.raises(PickleNotAllowedError):
        loads_untrusted(protocol.dumps({"x": ToPickle(1)}))
    assert protocol.loads(protocol.dumps({"x": ToPickle(1)})) == {"x": 1}


@pytest.fixture(params=["tcp", "tls", "ws"])
def scheme(request, tls_contexts):
    server, client = tls_contexts
    if request.param == "tls":
        return "tls", {"ssl_context": server}, {"ssl_context": client}
    return request.param, {}, {}


async def test_listener_refuses_pickles_and_comm_stays_usable(scheme, tmp_path):
    name, listen_args, connect_args = scheme
    accepted: asyncio.Queue = asyncio.Queue()
    listener = await dc.listen(
        f"{name}://127.0.0.1:0", accepted.put, allow_pickle=False, **listen_args
    )
    marker = tmp_path / "ran"
    try:
        client = await dc.connect(listener.contact_address, **connect_args)
        server = await asyncio.wait_for(accepted.get(), 5)
        assert server.allow_pickle is False and client.allow_pickle is True
        for i, msg in enumerate(forbidden(marker).values()):
            await client.write(msg)
            with pytest.raises(PickleNotAllowedError, match="allow_pickle=False"):
                await asyncio.wait_for(server.read(), 5)
            # the message was read whole: the next one arrives intact
            await client.write({"op": "after", "i": i})
            assert await asyncio.wait_for(server.read(), 5) == {"op": "after", "i": i}
        assert not server.closed()
        assert not marker.exists(), "a refused payload ran code"
        # the trusted end still accepts pickles from the untrusted one
        await server.write({"x": ToPickle({1, 2})})
        assert await asyncio.wait_for(client.read(), 5) == {"x": {1, 2}}
        await client.close()
    finally:
        listener.stop()


async def test_connect_option_refuses_pickles_from_the_server(tmp_path):
    marker = tmp_path / "ran"

    async def hostile(comm):
        await comm.write({"x": ToPickle(Touch(marker))})
        await comm.write({"op": "plain"})

    async with dc.listen("tcp://127.0.0.1:0", hostile) as listener:
        client = await dc.connect(listener.contact_address, allow_pickle=False)
        with pytest.raises(PickleNotAllowedError):
            await asyncio.wait_for(client.read(), 5)
        assert await asyncio.wait_for(client.read(), 5) == {"op": "plain"}
        assert not marker.exists()
        await client.close()


async def test_setting_refuses_pickles_on_both_ends(tmp_path):
    marker = tmp_path / "ran"

    async def tolerant_echo(comm):
        while True:
            try:
                msg = await comm.read()
            except PickleNotAllowedError:
                continue  # the refused message is dropped; the comm goes on
            except dc.CommClosedError:
                return
            await comm.write(msg)

    with config.set({"distributed.comm.allow-pickle": False}):
        async with dc.listen("tcp://127.0.0.1:0", tolerant_echo) as listener:
            client = await dc.connect(listener.contact_address)
            assert client.allow_pickle is False and listener.allow_pickle is False
            await client.write({"op": "msgpack only", "ok": {1}})
            assert await asyncio.wait_for(client.read(), 5) == {"op": "msgpack only", "ok": {1}}
            await client.write({"x": ToPickle(Touch(marker))})
            # the server refused it, so it echoes nothing; a plain message still comes back
            await client.write({"op": "next"})
            assert await asyncio.wait_for(client.read(), 5) == {"op": "next"}
            await client.close()
    assert not marker.exists()


async def test_explicit_option_overrides_the_setting():
    with config.set({"distributed.comm.allow-pickle": False}):
        async with dc.listen("tcp://127.0.0.1:0", echo, allow_pickle=True) as listener:
            client = await dc.connect(listener.contact_address, allow_pickle=True)
            await client.write({"x": ToPickle(frozenset({3}))})
            assert await asyncio.wait_for(client.read(), 5) == {"x": frozenset({3})}
            await client.close()


async def test_pickle_in_the_handshake_is_refused_before_any_code_runs(tmp_path, caplog):
    """Unpickling happens in the handshake too: an untrusted listener drops that peer."""
    marker = tmp_path / "ran"
    caplog.set_level(logging.INFO)
    async with dc.listen("tcp://127.0.0.1:0", echo, allow_pickle=False) as listener:
        host, port = dc.get_address_host_port(listener.contact_address)
        reader, writer = await asyncio.open_connection(host, port)
        info = {"compression": None, "python": (3, 11, 0), "pickle-protocol": 5}
        writer.write(wire(protocol.dumps({**info, "x": ToPickle(Touch(marker))})))
        await hung_up(reader)
        writer.close()
        assert not marker.exists()
        assert "allow_pickle=False" in caplog.text
        assert_quiet(caplog, dropped=1)
        await assert_serves(listener)


def test_a_codec_that_cannot_refuse_pickles_is_rejected_up_front():
    from distributed_comm.tcp import TCPListener

    class Foreign(TCPListener):
        codec = protocol  # any codec other than ours: we cannot vouch for it

    with pytest.raises(ValueError, match="cannot refuse pickles"):
        Foreign("127.0.0.1:0", echo, allow_pickle=False)
    Foreign("127.0.0.1:0", echo)  # allowed: nothing to refuse


def test_interop_comms_refuse_allow_pickle_false():
    pytest.importorskip("distributed")
    from distributed_comm import interop

    with pytest.raises(ValueError, match="cannot refuse pickles"):
        interop.TCPListener("127.0.0.1:0", echo, allow_pickle=False)
