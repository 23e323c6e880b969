"""connect(): retries with backoff until the timeout, never retries fatal errors;
the handshake's negotiated options match distributed's."""

from __future__ import annotations

import socket
import time

import pytest

import distributed_comm as comm
from distributed_comm import core, registry
from distributed_comm.tcp import TCPBackend

their_core = pytest.importorskip("distributed.comm.core")


class _FailingConnector(core.Connector):
    def __init__(self, backend):
        self.backend = backend

    async def connect(self, address, deserialize=True, **connection_args):
        self.backend.attempts.append((time.monotonic(), address, connection_args))
        raise self.backend.error


class _FailingBackend(TCPBackend):
    """Every connection attempt fails with ``error``; attempts are recorded."""

    def __init__(self, error):
        self.error = error
        self.attempts = []

    def get_connector(self):
        return _FailingConnector(self)


@pytest.fixture
def failing_backend(request):
    backend = _FailingBackend(request.param)
    registry.backends["failing"] = backend
    yield backend
    del registry.backends["failing"]


@pytest.mark.parametrize("failing_backend", [comm.FatalCommClosedError("bad cert")], indirect=True)
async def test_fatal_error_is_raised_at_once(failing_backend):
    start = time.monotonic()
    with pytest.raises(comm.FatalCommClosedError, match="bad cert"):
        await comm.connect("failing://127.0.0.1:1", timeout=5)
    assert time.monotonic() - start < 0.5
    assert len(failing_backend.attempts) == 1


@pytest.mark.parametrize("failing_backend", [ConnectionRefusedError("refused")], indirect=True)
async def test_retries_until_timeout_then_oserror(failing_backend):
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        await comm.connect("failing://127.0.0.1:1", timeout="500ms", ssl_context=None)
    elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 1.0
    assert str(info.value) == "Timed out trying to connect to failing://127.0.0.1:1 after 0.5 s"
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    attempts = failing_backend.attempts
    assert len(attempts) > 3  # it retried
    assert all(a[1] == "127.0.0.1:1" and a[2] == {"ssl_context": None} for a in attempts)
    # full-jitter backoff from a 10 ms base: the first pauses are short
    gaps = [b[0] - a[0] for a, b in zip(attempts, attempts[1:], strict=False)]
    assert max(gaps[:2]) <= 0.05


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_connect_to_closed_port_times_out_in_time():
    addr = f"tcp://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(OSError, match="Timed out trying to connect"):
        await comm.connect(addr, timeout=0.5)
    assert 0.5 <= time.monotonic() - start < 1.0


async def test_unknown_scheme_is_a_value_error():
    with pytest.raises(ValueError, match="unknown address scheme 'nope'"):
        await comm.connect("nope://127.0.0.1:1", timeout=1)
    with pytest.raises(ValueError, match="unknown address scheme 'nope'"):
        comm.listen("nope://127.0.0.1:1", lambda c: None)


HANDSHAKES = [
    ({"pickle-protocol": 5, "compression": None}, {"pickle-protocol": 4, "compression": None}),
    ({"pickle-protocol": 5, "compression": "lz4"}, {"pickle-protocol": 5, "compression": "lz4"}),
    ({"pickle-protocol": 5, "compression": "lz4"}, {"pickle-protocol": 5, "compression": "zstd"}),
    ({"pickle-protocol": 5, "compression": None}, {"compression": None}),
    ({"pickle-protocol": 3, "compression": "zlib", "x": 1},
     {"pickle-protocol": 5, "compression": "zlib"}),
]  # fmt: skip


@pytest.mark.parametrize("local,remote", HANDSHAKES)
def test_handshake_configuration_matches_distributed(local, remote):
    def outcome(func):
        try:
            return func(local, remote)
        except Exception as exc:  # noqa: BLE001
            return type(exc)

    assert outcome(comm.Comm.handshake_configuration) == outcome(
        their_core.Comm.handshake_configuration
    )


def test_compression_offered_follows_settings():
    from distributed_comm import config

    assert core._negotiable_compression() is None
    with config.set({"distributed.comm.compression": "auto"}):
        assert core._negotiable_compression() == "lz4"
    with config.set({"distributed.comm.compression": "zlib"}):
        assert core._negotiable_compression() == "zlib"
