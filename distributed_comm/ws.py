"""``ws://`` and ``wss://`` comms on Tornado's websocket server and client.

For networks that only let HTTP through. On the wire, as distributed's
ws/wss comms put it: after the HTTP upgrade, each comm message is one binary
websocket message holding the frame count (u64) followed by one binary
websocket message per frame. Frames are made by the comm's codec and split at
``distributed.comm.websockets.shard`` so no websocket message gets huge.

Tornado delivers websocket messages by callback; an :class:`_Inbox` per
connection reassembles them into comm messages, checking the limits first.
Tornado reads eagerly, so messages wait in memory until the comm reads them
(as on distributed's ws server); ``max-message-size`` bounds each one.
Not supported: distributed's sharing of the dashboard's HTTP server port.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import weakref
from typing import Any, ClassVar

from tornado import netutil, web
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    WebSocketError,
    WebSocketHandler,
    websocket_connect,
)

from distributed_comm import frames
from distributed_comm.addressing import parse_host_port, unparse_host_port
from distributed_comm.codec import Codec
from distributed_comm.core import CommClosedError, Connector
from distributed_comm.registry import backends
from distributed_comm.tcp import (
    BaseTCPBackend,
    CodecComm,
    TCPListener,
    _closed_error,
    _current_settings,
    _expect_tls_context,
    _location,
    _NumericFirstResolver,
    _RequireEncryption,
    connect_errors,
    set_tcp_timeout,
)

logger = logging.getLogger(__name__)

__all__ = ["WS", "WSS", "WSConnector", "WSListener", "WSSConnector", "WSSListener"]

#: Tornado refuses to buffer more than ``max_buffer_size``; a websocket
#: message is read whole, at most one frame chunk at a time.
_MAX_BUFFER_SIZE = frames.C_INT_MAX + 1

#: Either end of a websocket: both have ``write_message(data, binary)`` and ``close()``.
Socket = WebSocketHandler | WebSocketClientConnection

_CLOSED_BY_PEER = "connection closed by the peer"


class _Inbox:
    """Incoming websocket messages reassembled into comm messages.

    A comm message is a count message (8 bytes, u64) then that many frame
    messages. The count and the running size are checked against the limits
    before anything is kept; after a violation the rest is ignored and the
    reader gets the error (once it has read the messages before it).
    """

    def __init__(self, limits: frames.Limits):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.peer_closed = False
        self._limits = limits
        self._frames: list[bytes] = []
        self._missing = 0
        self._size = 0
        self._broken = False

    def feed(self, data: bytes | str | None) -> None:
        """Tornado's message callback; ``None`` means the connection closed."""
        if self._broken:
            return
        if data is None:
            self.peer_closed = True
            self._stop(_CLOSED_BY_PEER)
        elif not isinstance(data, bytes):
            self._stop("peer sent a text websocket message; comms use binary ones only")
        elif self._missing:
            self._frames.append(data)
            self._size += len(data)
            self._missing -= 1
            if self._size > self._limits.max_message_size:
                self._stop(
                    f"message of more than {self._size} bytes; the limit is "
                    f"{self._limits.max_message_size} (distributed.comm.max-message-size)"
                )
            elif not self._missing:
                self.queue.put_nowait((self._frames, self._size))
                self._frames, self._size = [], 0
        elif len(data) != frames.U64.size:
            self._stop(f"expected an 8-byte frame count, got {len(data)} bytes")
        else:
            (count,) = frames.U64.unpack(data)
            if count > self._limits.max_frames:
                self._stop(
                    f"message declares {count} frames; the limit is "
                    f"{self._limits.max_frames} (distributed.comm.max-frames)"
                )
            elif count == 0:
                self.queue.put_nowait(([], 0))
            else:
                self._missing = count

    def _stop(self, reason: str) -> None:
        self._broken = True
        self.queue.put_nowait(reason)


def _queued(sent: asyncio.Future) -> None:
    """Leave a websocket write to the stream, as the TCP comm does.

    Not waiting for the flush keeps a writer from blocking on a peer that
    reads only after the write returns; the error of a write the stream
    could not finish (the comm then closes) is collected here.
    """
    sent.add_done_callback(_collect_error)


def _collect_error(sent: asyncio.Future) -> None:
    if not sent.cancelled():
        sent.exception()


def _close_dangling(sock: Socket, description: str) -> None:
    logger.warning("closing dangling websocket in %s", description)
    try:
        sock.close()
    except RuntimeError:  # its event loop is gone (shutdown): the socket goes with the process
        pass


class WS(CodecComm):
    """A comm over one websocket, client or server end."""

    sock: Socket | None

    def __init__(
        self,
        sock: Socket,
        stream: IOStream,
        inbox: _Inbox,
        local_addr: str,
        peer_addr: str,
        deserialize: bool = True,
        codec: Codec | None = None,
        allow_pickle: bool | None = None,
    ):
        super().__init__(local_addr, peer_addr, deserialize, codec, allow_pickle)
        self.sock = sock
        self._inbox = inbox
        # A comm message is several websocket writes: Nagle would hold all but the first.
        stream.set_nodelay(True)
        settings = _current_settings()
        set_tcp_timeout(stream.socket, settings.tcp_timeout)
        self._extra.update(_tls_info(stream.socket))
        self.max_shard_size = settings.ws_shard
        self._finalizer = weakref.finalize(self, _close_dangling, sock, repr(self))
        self._finalizer.atexit = False

    def closed(self) -> bool:
        return self._closed or self._inbox.peer_closed

    def _sock_or_raise(self) -> Socket:
        sock = self.sock
        if sock is None or self._inbox.peer_closed:
            raise CommClosedError(f"{self!r} is closed")
        return sock

    async def read(self, deserializers=None) -> Any:
        if self.sock is None:
            raise CommClosedError(f"{self!r} is closed")
        item = await self._inbox.queue.get()
        if isinstance(item, str):
            self._inbox.queue.put_nowait(item)  # every later read fails the same way
            self.abort()
            raise CommClosedError(f"in {self!r}: {item}")
        msg_frames, size = item
        # A whole message that does not decode loses only itself (see TCP.read).
        return await self._from_frames(msg_frames, size, deserializers)

    async def write(self, msg: Any, serializers=None, on_error="message") -> int:
        self._sock_or_raise()
        msg_frames = await self._to_frames(msg, serializers, on_error)
        sock = self._sock_or_raise()
        total = 0
        try:
            _queued(sock.write_message(frames.U64.pack(len(msg_frames)), binary=True))
            for frame in msg_frames:
                data = frame if type(frame) is bytes else bytes(frame)  # tornado takes bytes only
                _queued(sock.write_message(data, binary=True))
                total += len(data)
        except (WebSocketClosedError, StreamClosedError) as exc:
            self.abort()
            raise _closed_error(self, exc) from exc
        return total

    async def close(self) -> None:
        """Close the websocket; tornado sends the close after the queued writes."""
        self.abort()

    def abort(self) -> None:
        sock, self.sock = self.sock, None
        self._closed = True
        if sock is not None:
            self._finalizer.detach()
            self._inbox.queue.put_nowait(f"{self!r} was closed")
            sock.close()


class WSS(WS):
    """A :class:`WS` over TLS: its own class (and repr), as in distributed."""


def _tls_info(raw: Any) -> dict:
    """``peercert`` and ``cipher`` of a TLS socket (nothing for plain ones)."""
    if isinstance(raw, ssl.SSLSocket):
        return {"peercert": raw.getpeercert(), "cipher": raw.cipher()}
    return {}


class _Handler(WebSocketHandler):
    """Tornado's end of one accepted websocket: feeds an inbox, hands a comm to the listener."""

    listener: WSListener
    inbox: _Inbox | None = None

    def initialize(self, listener: WSListener) -> None:
        self.listener = listener

    def open(self) -> None:
        # Messages are delivered only once this returns: the handshake runs as a task.
        self.inbox = _Inbox(self.listener.limits)
        self.listener.accept(self, self.inbox, self.ws_connection.stream)

    def on_message(self, message: str | bytes) -> None:
        self.inbox.feed(message)

    def on_close(self) -> None:
        if self.inbox is not None:
            self.inbox.feed(None)


class WSListener(TCPListener):
    """Serves websockets at ``/`` on an HTTP server; each one becomes a handshaken comm."""

    prefix: ClassVar[str] = "ws://"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.limits = _current_settings().limits
        self._tasks: set[asyncio.Task] = set()

    def _make_server(self) -> HTTPServer:
        app = web.Application(
            [(r"/", _Handler, {"listener": self})],
            websocket_max_message_size=self.limits.max_message_size,
        )
        return HTTPServer(app, max_buffer_size=_MAX_BUFFER_SIZE, **self.server_args)

    def accept(self, sock: _Handler, inbox: _Inbox, stream: IOStream) -> None:
        """Make the comm of a new websocket and start its handshake."""
        comm = (WSS if self.encrypted else WS)(
            sock,
            stream,
            inbox,
            self.prefix + _location(stream.socket.getsockname()),
            self.prefix + _location(stream.socket.getpeername()),
            self.deserialize,
            codec=self.codec,
            allow_pickle=self.allow_pickle,
        )
        task = asyncio.ensure_future(self._serve(comm))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class WSSListener(WSListener):
    """:class:`WSListener` over TLS; needs ``ssl_context=``."""

    prefix = "wss://"
    encrypted = True

    def _server_args(self, connection_args: dict) -> dict:
        return {"ssl_options": _expect_tls_context(connection_args)}


class WSConnector(Connector, _RequireEncryption):
    """Opens :class:`WS` comms with ``websocket_connect``.

    ``extra_conn_args`` (a dict) is passed to Tornado's ``HTTPRequest``, e.g.
    ``{"headers": {...}}`` for a proxy, as distributed's ws connector does.
    """

    prefix: ClassVar[str] = "ws://"
    encrypted: ClassVar[bool] = False
    codec: ClassVar[Codec | None] = None
    resolver: ClassVar[netutil.Resolver] = _NumericFirstResolver()

    def _request(self, address: str, connection_args: dict) -> tuple[HTTPRequest, netutil.Resolver]:
        return (
            HTTPRequest(f"{self.prefix}{address}/", **connection_args.get("extra_conn_args", {})),
            self.resolver,
        )

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> WS:
        self._check_encryption(address, connection_args)
        request, resolver = self._request(address, connection_args)
        limits = _current_settings().limits
        inbox = _Inbox(limits)
        try:
            with connect_errors(self.prefix + address):
                sock = await websocket_connect(
                    request,
                    on_message_callback=inbox.feed,
                    max_message_size=limits.max_message_size,
                    resolver=resolver,
                )
                stream = sock.protocol.stream
                if stream.closed():
                    raise StreamClosedError(stream.error)
        except (HTTPClientError, WebSocketError) as exc:
            raise CommClosedError(
                f"websocket upgrade at {self.prefix + address} failed: {exc}"
            ) from exc
        # Tornado's client caps reads at 100 MB; a frame may be as large as a message.
        stream.max_buffer_size = _MAX_BUFFER_SIZE
        return (WSS if self.encrypted else WS)(
            sock,
            stream,
            inbox,
            self.prefix + _location(stream.socket.getsockname()),
            self.prefix + address,
            deserialize,
            codec=self.codec,
            allow_pickle=connection_args.get("allow_pickle"),
        )


class WSSConnector(WSConnector):
    """Opens :class:`WS` comms over TLS; needs ``ssl_context=``, takes ``server_hostname=``."""

    prefix = "wss://"
    encrypted = True

    def _request(self, address: str, connection_args: dict) -> tuple[HTTPRequest, netutil.Resolver]:
        context = _expect_tls_context(connection_args)
        resolver = self.resolver
        name = connection_args.get("server_hostname")
        if name:
            # Ask for *name* (SNI, certificate check, Host header) but connect to *address*.
            host, port = parse_host_port(address)
            resolver = netutil.OverrideResolver(resolver, {(name, port): (host, port)})
            address = unparse_host_port(name, port)
        request = HTTPRequest(
            f"{self.prefix}{address}/",
            ssl_options=context,
            **connection_args.get("extra_conn_args", {}),
        )
        return request, resolver


class WSBackend(BaseTCPBackend):
    _connector_class = WSConnector
    _listener_class = WSListener


class WSSBackend(BaseTCPBackend):
    _connector_class = WSSConnector
    _listener_class = WSSListener


backends["ws"] = WSBackend()
backends["wss"] = WSSBackend()
