"""Our tcp/tls transport inside dask/distributed, speaking distributed's own serialization.

The comms here are :class:`distributed_comm.tcp.TCP` / ``TLS`` (our framing,
stream handling and zero-copy reads and writes) with two things swapped in:
messages become frames through ``distributed.comm.utils.to_frames`` /
``from_frames``, exactly as on distributed's tcp, so ``Serialize``,
``ToPickle``, ``Serialized`` pass-through and ``deserialize=False`` behave the
same; and errors are raised as types both libraries catch. They are also
``distributed.comm.core.Comm`` subclasses, listeners ``BaseListener``
subclasses and backends ``distributed.comm.registry.Backend`` subclasses.

Two ways in:

- the schemes ``dc+tcp://`` and ``dc+tls://``, published as entry points in the
  group ``distributed.comm.backends``: ``LocalCluster(protocol="dc+tcp://")``,
  ``dask scheduler --protocol dc+tcp``, ``Client("dc+tcp://host:port")``;
- :func:`install`, which puts our transport behind distributed's own ``tcp://``
  and ``tls://`` in this process, so existing code (and stock peers) work unchanged.

Importing this module imports ``distributed``: it exists to plug into it.
``import distributed_comm`` alone never does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

try:
    import dask.config
    from distributed.comm import core as _stock_core
    from distributed.comm import registry as _stock_registry
    from distributed.comm.utils import from_frames, to_frames
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    if (exc.name or "").split(".")[0] not in ("dask", "distributed"):
        raise
    raise ImportError(
        "distributed_comm.interop plugs our transports into dask's `distributed`, "
        "which is not installed: run `pip install distributed` "
        "(or `pip install 'distributed_comm[test]'`)"
    ) from exc

from distributed_comm import config, core, frames, tcp

__all__ = [
    "CommClosedError",
    "DCTCPBackend",
    "DCTLSBackend",
    "FatalCommClosedError",
    "TCPBackend",
    "TLSBackend",
    "install",
    "uninstall",
]


class CommClosedError(core.CommClosedError, _stock_core.CommClosedError):
    """Caught by ``except CommClosedError`` of either library."""


class FatalCommClosedError(
    CommClosedError, core.FatalCommClosedError, _stock_core.FatalCommClosedError
):
    """Not retried by ``connect`` of either library."""


def _both(exc: core.CommClosedError) -> CommClosedError:
    kind = FatalCommClosedError if isinstance(exc, core.FatalCommClosedError) else CommClosedError
    return kind(str(exc))


class _StockComm:
    """What turns one of our stream comms into a distributed comm.

    The shard size (it shapes the frames) and the TCP timeout come from
    ``dask.config``, where a dask deployment sets them, read once per comm.
    """

    # distributed's own: it offers the compression dask.config asks for.
    handshake_info = _stock_core.Comm.handshake_info
    # distributed's from_frames decodes: it cannot refuse pickles (allow_pickle=False).
    decodes_with_codec = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        _stock_core.Comm._instances.add(self)  # distributed's leak checks look here
        shard = config.parse_bytes(dask.config.get("distributed.comm.shard"))
        if isinstance(self, tcp.TLS):  # TLS records stop at a C int, as in tcp.TLS
            shard = min(shard, frames.C_INT_MAX)
        self.max_shard_size = shard
        timeout = config.parse_timedelta(dask.config.get("distributed.comm.timeouts.tcp"))
        if self.stream.socket is not None and timeout:
            tcp.set_tcp_timeout(self.stream.socket, timeout)

    async def _to_frames(self, msg: Any, serializers: Any, on_error: Any) -> list:
        return await to_frames(
            msg, allow_offload=self.allow_offload, **self._dumps_args(serializers, on_error)
        )

    async def _from_frames(self, msg_frames: list, size: int, deserializers) -> Any:
        return await from_frames(
            msg_frames,
            deserialize=self.deserialize,
            deserializers=deserializers,
            allow_offload=self.allow_offload,
        )

    async def read(self, deserializers=None) -> Any:
        try:
            return await super().read(deserializers)
        except core.CommClosedError as exc:
            raise _both(exc) from exc

    async def write(self, msg: Any, serializers=None, on_error="message") -> int:
        try:
            return await super().write(msg, serializers, on_error)
        except core.CommClosedError as exc:
            raise _both(exc) from exc


class TCP(_StockComm, tcp.TCP, _stock_core.Comm):
    """Our TCP comm with distributed's serialization."""


class TLS(_StockComm, tcp.TLS, _stock_core.Comm):
    """Our TLS comm with distributed's serialization."""


class _StockConnect:
    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any):
        try:
            return await super().connect(address, deserialize, **connection_args)
        except core.CommClosedError as exc:
            raise _both(exc) from exc


class TCPConnector(_StockConnect, tcp.TCPConnector, _stock_core.Connector):
    comm_class = TCP


class TLSConnector(_StockConnect, tcp.TLSConnector, _stock_core.Connector):
    comm_class = TLS


class TCPListener(tcp.TCPListener, _stock_core.BaseListener):
    comm_class = TCP


class TLSListener(tcp.TLSListener, _stock_core.BaseListener):
    comm_class = TLS


class DCTCPConnector(TCPConnector):
    prefix = "dc+tcp://"


class DCTLSConnector(TLSConnector):
    prefix = "dc+tls://"


class DCTCPListener(TCPListener):
    prefix = "dc+tcp://"


class DCTLSListener(TLSListener):
    prefix = "dc+tls://"


class TCPBackend(tcp.BaseTCPBackend, _stock_registry.Backend):
    """``tcp://`` on our transport (what :func:`install` puts in place)."""

    _connector_class = TCPConnector
    _listener_class = TCPListener


class TLSBackend(tcp.BaseTCPBackend, _stock_registry.Backend):
    """``tls://`` on our transport (what :func:`install` puts in place)."""

    _connector_class = TLSConnector
    _listener_class = TLSListener


class DCTCPBackend(tcp.BaseTCPBackend, _stock_registry.Backend):
    """``dc+tcp://``: entry point, usable next to distributed's own ``tcp://``."""

    _connector_class = DCTCPConnector
    _listener_class = DCTCPListener


class DCTLSBackend(tcp.BaseTCPBackend, _stock_registry.Backend):
    """``dc+tls://``: entry point; takes ``ssl_context`` like ``tls://`` (``Security`` gives it)."""

    _connector_class = DCTLSConnector
    _listener_class = DCTLSListener


_INSTALLABLE: dict[str, type[_stock_registry.Backend]] = {"tcp": TCPBackend, "tls": TLSBackend}

#: Backends :func:`install` replaced, to put back on :func:`uninstall` (None: there was none).
_replaced: dict[str, _stock_registry.Backend | None] = {}


def install(schemes: Iterable[str] = ("tcp", "tls")) -> None:
    """Serve distributed's *schemes* with our transport in this process.

    Connections made afterwards (and listeners started afterwards) use it;
    peers cannot tell the difference. Calling it again is harmless.
    """
    schemes = tuple(schemes)
    unknown = [scheme for scheme in schemes if scheme not in _INSTALLABLE]
    if unknown:
        raise ValueError(
            f"install() can replace the schemes {sorted(_INSTALLABLE)}, not {unknown!r} "
            "(dc+tcp and dc+tls need no install: they are entry points)"
        )
    for scheme in schemes:
        _replaced.setdefault(scheme, _stock_registry.backends.get(scheme))
        _stock_registry.backends[scheme] = _INSTALLABLE[scheme]()


def uninstall() -> None:
    """Put back the backends :func:`install` replaced."""
    for scheme, backend in _replaced.items():
        if backend is None:
            _stock_registry.backends.pop(scheme, None)
        else:
            _stock_registry.backends[scheme] = backend
    _replaced.clear()
