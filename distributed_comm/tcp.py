"""TCP and TLS transports on Tornado ``TCPServer`` / ``TCPClient`` / ``IOStream``.

Tornado opens the connections; :class:`TCP` then moves frames over the
stream's socket as WIRE.md section 1 lays them out (see
:mod:`distributed_comm.stream` and :mod:`distributed_comm.frames`) and leaves
message <-> frames to its codec (:mod:`distributed_comm.codec`), so other
stream transports and other codecs reuse it unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import functools
import inspect
import logging
import os
import socket
import ssl
import sys
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from tornado import netutil
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.tcpserver import TCPServer

from distributed_comm import config, frames
from distributed_comm.addressing import parse_host_port, unparse_host_port
from distributed_comm.codec import Codec, default_codec, rough_nbytes
from distributed_comm.core import (
    BaseListener,
    Comm,
    CommClosedError,
    Connector,
    FatalCommClosedError,
)
from distributed_comm.registry import Backend, backends
from distributed_comm.stream import SocketStream, take_socket
from distributed_comm.utils import (
    ensure_concrete_host,
    ensure_ip,
    get_ip,
    get_tcp_server_address,
)

logger = logging.getLogger(__name__)

__all__ = ["CodecComm", "TCP", "TLS", "TCPConnector", "TLSConnector", "TCPListener", "TLSListener"]

_INET = (socket.AF_INET, socket.AF_INET6)
#: TLS handshake errors that Tornado's IOStream logs by itself, and where.
_TORNADO_LOGS = (ssl.SSL_ERROR_SSL, ssl.SSL_ERROR_SYSCALL)
_tornado_log = logging.getLogger("tornado.general")
_KEEPALIVE_PROBES = 10
#: What a unix socket may have in flight (the kernel doubles it, capped by
#: ``net.core.wmem_max``). The default, about 200 KiB, makes a large message
#: cost a wake-up of each side per 200 KiB; TCP on loopback grows to 4 MiB by itself.
_UNIX_SEND_BUFFER = 2**21

_offload_executor: ThreadPoolExecutor | None = None


def offload(func: Callable[[], Any]) -> asyncio.Future:
    """Run *func* on the one background thread shared by every comm.

    One thread keeps large (de)serializations in order and off the event
    loop without competing with each other for the GIL.
    """
    global _offload_executor
    if _offload_executor is None:
        _offload_executor = ThreadPoolExecutor(1, thread_name_prefix="distributed_comm-offload")
    context = contextvars.copy_context()
    return asyncio.get_running_loop().run_in_executor(_offload_executor, context.run, func)


def set_tcp_timeout(sock: socket.socket, timeout: float) -> None:
    """Make the kernel notice a dead peer within about *timeout* seconds.

    Keepalive starts probing an idle connection after a quarter of the time
    and gives up after ten unanswered probes; ``TCP_USER_TIMEOUT`` (Linux)
    bounds how long sent data may stay unacknowledged.
    """
    seconds = int(timeout)
    if seconds <= 0:
        return
    idle = max(1, seconds // 4)
    interval = max(1, (seconds - idle) // _KEEPALIVE_PROBES)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, _KEEPALIVE_PROBES)
        if sys.platform.startswith("linux"):
            user_timeout = getattr(socket, "TCP_USER_TIMEOUT", 18)
            sock.setsockopt(socket.IPPROTO_TCP, user_timeout, seconds * 1000)
    except OSError:
        logger.exception("could not set the TCP timeout on %r", sock)


def _closed_error(where: object, exc: BaseException) -> CommClosedError:
    """The ``CommClosedError`` for a stream failure in *where* (a comm or connector)."""
    cause = getattr(exc, "real_error", None) or exc
    if isinstance(cause, ssl.SSLError) and "UNKNOWN_CA" in (cause.reason or ""):
        return FatalCommClosedError(f"in {where}: TLS peer does not trust us: {cause}")
    return CommClosedError(f"in {where}: {type(cause).__name__}: {cause}")


def _mark_closed(ref: weakref.ref) -> None:
    comm = ref()
    if comm is not None:
        comm._closed = True


def _location(name: tuple | str | bytes) -> str:
    """A socket name as an address location: ``host:port``, or a unix socket's path."""
    if isinstance(name, tuple):
        return unparse_host_port(*name[:2])
    return os.fsdecode(name)


def _close_dangling(stream: SocketStream, description: str) -> None:
    if not stream.closed():
        logger.warning("closing dangling stream in %s", description)
        stream.close_after_writes()  # what was written still reaches the peer


class _Settings:
    """What a comm reads from the settings, parsed once per configuration
    (re-read after ``config.set``), so making a comm parses nothing."""

    __slots__ = ("shard", "ws_shard", "offload", "limits", "allow_pickle", "tcp_timeout")

    def __init__(self) -> None:
        self.shard = config.parse_bytes(config.get("distributed.comm.shard"))
        self.ws_shard = config.parse_bytes(config.get("distributed.comm.websockets.shard"))
        self.offload = config.parse_bytes(config.get("distributed.comm.offload") or 0)
        self.limits = frames.Limits.from_config()
        self.allow_pickle = bool(config.get("distributed.comm.allow-pickle"))
        timeout = config.parse_timedelta(config.get("distributed.comm.timeouts.tcp"))
        self.tcp_timeout = timeout or 0


_settings: _Settings | None = None


@config.on_change
def _forget_settings() -> None:
    global _settings
    _settings = None


def _current_settings() -> _Settings:
    global _settings
    if _settings is None:
        _settings = _Settings()
    return _settings


def _frames_size(msg_frames: list, limit: int) -> int:
    """Decoding work as judged for a codec that cannot tell: every byte."""
    return sum(map(frames.nbytes, msg_frames))


def _message_size(msg: Any, **dumps_args: Any) -> int:
    """Encoding work as judged for a codec that cannot tell: the message's size."""
    return rough_nbytes(msg)


class CodecComm(Comm):
    """A comm that turns messages into frames with a codec; subclasses move the frames.

    Settings are copied when the comm is made; reading and writing a small
    message does no lookups, no size walks and no thread hops.
    """

    max_shard_size: int
    #: False in subclasses whose ``_from_frames`` bypasses :attr:`codec`.
    decodes_with_codec: ClassVar[bool] = True

    @classmethod
    def check_can_refuse_pickles(cls, codec: Codec | None) -> None:
        """``ValueError`` unless comms of this class with *codec* can honour
        ``allow_pickle=False`` (only our own protocol knows how)."""
        if codec is not None or not cls.decodes_with_codec:
            raise ValueError(
                f"allow_pickle=False needs distributed_comm's own protocol; {cls.__name__} "
                f"comms decode with {codec or 'their own serialization'}, which cannot "
                "refuse pickles"
            )

    def __init__(
        self,
        local_addr: str,
        peer_addr: str,
        deserialize: bool = True,
        codec: Codec | None = None,
        allow_pickle: bool | None = None,
    ):
        self._closed = False
        super().__init__(deserialize=deserialize)
        self._local_addr = local_addr
        self._peer_addr = peer_addr
        settings = _current_settings()
        if allow_pickle is None:
            allow_pickle = settings.allow_pickle
        #: False: messages carrying pickles are refused (``PickleNotAllowedError``).
        self.allow_pickle = bool(allow_pickle)
        if not self.allow_pickle:
            self.check_can_refuse_pickles(codec)
        self.codec = codec if codec is not None else default_codec(self.allow_pickle)
        #: The codec's shortcut for plain messages (with its dumps for the rest), if any.
        self._dumps_plain = getattr(self.codec, "dumps_plain", None)
        self._dumps = getattr(self.codec, "dumps_with_hooks", None)
        if self._dumps_plain is None or self._dumps is None:
            self._dumps_plain, self._dumps = None, self.codec.dumps
        #: The codec's measures of (de)serializing work, if it has them (else a
        #: message's size decides whether it goes to the offload thread).
        self._loads_work = getattr(self.codec, "loads_work", None) or _frames_size
        self._dumps_work = getattr(self.codec, "dumps_work", None) or _message_size
        self.max_shard_size = settings.shard
        self._offload_threshold = settings.offload
        self._limits = settings.limits
        self._extra: dict = {}

    @property
    def local_address(self) -> str:
        return self._local_addr

    @property
    def peer_address(self) -> str:
        return self._peer_addr

    @property
    def extra_info(self) -> dict:
        return self._extra

    def closed(self) -> bool:
        return self._closed

    async def _from_frames(self, msg_frames: list, size: int, deserializers) -> Any:
        """Frames -> message with the codec; on the offload thread when that
        reads or copies more than the offload size (``codec.loads_work``):
        arrays and bytes built over their received buffers stay on the loop.

        Subclasses override this and :meth:`_to_frames` to plug in a
        serialization that does its own offloading (see ``interop``).
        """
        threshold = self._offload_threshold
        if (
            self.allow_offload
            and self.deserialize
            and threshold > 0
            and (size > threshold or len(msg_frames) > 1)  # one frame: its size is the work
            and self._loads_work(msg_frames, threshold) > threshold
        ):
            return await offload(
                functools.partial(
                    self.codec.loads, msg_frames, deserialize=True, deserializers=deserializers
                )
            )
        return self.codec.loads(
            msg_frames, deserialize=self.deserialize, deserializers=deserializers
        )

    def _dumps_args(self, serializers: Any, on_error: Any) -> dict[str, Any]:
        """How a message to this peer is serialized (``protocol.dumps`` keywords)."""
        return {
            "serializers": serializers,
            "on_error": on_error,
            "context": {
                "sender": self.local_info,
                "recipient": self.remote_info,
                **self.handshake_options,
            },
            "frame_split_size": self.max_shard_size,
        }

    async def _to_frames(self, msg: Any, serializers: Any, on_error: Any) -> list:
        """Message -> frames with the codec; on the offload thread when that
        reads or copies more than the offload size (``codec.dumps_work``).

        A message msgpack encodes alone (most control messages) takes the
        codec's ``dumps_plain`` shortcut, always on the loop: msgpack holds
        the GIL throughout, so another thread would not free the loop anyway.
        """
        if self._dumps_plain is not None:
            body = self._dumps_plain(msg)
            if body is not None:
                return [body]
        dumps_args = self._dumps_args(serializers, on_error)
        threshold = self._offload_threshold
        if self.allow_offload and threshold > 0 and self._dumps_work(msg, **dumps_args) > threshold:
            return await offload(functools.partial(self._dumps, msg, **dumps_args))
        return self._dumps(msg, **dumps_args)


class TCP(CodecComm):
    """A comm over the socket of a connected Tornado ``IOStream``, moving frames
    as WIRE.md section 1 lays them out (the socket is taken over: see
    :mod:`distributed_comm.stream`)."""

    stream: SocketStream | None

    def __init__(
        self,
        stream: IOStream,
        local_addr: str,
        peer_addr: str,
        deserialize: bool = True,
        codec: Codec | None = None,
        allow_pickle: bool | None = None,
    ):
        super().__init__(local_addr, peer_addr, deserialize, codec, allow_pickle)
        sock, buffered = take_socket(stream)
        if sock.family in _INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            set_tcp_timeout(sock, _current_settings().tcp_timeout)
        elif sock.family == getattr(socket, "AF_UNIX", None):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _UNIX_SEND_BUFFER)
        self.stream = SocketStream(sock, self._limits, buffered)
        self._finalizer = weakref.finalize(self, _close_dangling, self.stream, repr(self))
        self._finalizer.atexit = False
        self.stream.set_close_callback(functools.partial(_mark_closed, weakref.ref(self)))
        self._read_extra()

    def _read_extra(self) -> None:
        """Collect transport facts for :attr:`extra_info` (TLS adds its own)."""

    def _stream_or_raise(self) -> SocketStream:
        stream = self.stream
        if stream is None:
            raise CommClosedError(f"{self!r} is closed")
        return stream

    def _lost(self, exc: BaseException) -> CommClosedError:
        """Forget a stream that failed under us; the error to raise names the peer."""
        self.abort()
        return _closed_error(self, exc)

    async def read(self, deserializers=None) -> Any:
        """The next message.

        A peer breaking the framing or the limits, or going away, aborts the
        comm (``CommClosedError``). A message that arrived whole but does not
        decode (malformed, or a pickle when ``allow_pickle=False``) raises the
        codec's error instead (see ``protocol.loads``): only that message is
        lost, the stream is still in step and the comm stays usable.
        """
        stream = self._stream_or_raise()
        try:
            msg_frames, size = await stream.read_message()
        except (StreamClosedError, OSError) as exc:
            raise self._lost(exc) from exc
        except ValueError as exc:  # the peer broke the limits or the framing
            self.abort()
            raise CommClosedError(f"in {self!r}: {exc}") from exc
        except BaseException:
            # Interrupted mid-message: where the next message starts is unknown.
            self.abort()
            raise
        return await self._from_frames(msg_frames, size, deserializers)

    async def write(self, msg: Any, serializers=None, on_error="message") -> int:
        self._stream_or_raise()
        msg_frames = await self._to_frames(msg, serializers, on_error)
        parts, total = frames.encode(msg_frames)
        stream = self._stream_or_raise()
        try:
            stream.write(parts)
        except StreamClosedError as exc:
            raise self._lost(exc) from exc
        except BaseException:
            # Some of the message may be queued: the stream can't carry another.
            self.abort()
            raise
        return total

    async def close(self) -> None:
        """Flush pending writes, shut the socket down, close."""
        stream, self.stream = self.stream, None
        self._closed = True
        if stream is None or stream.closed():
            return
        try:
            await stream.drain()
            stream.socket.shutdown(socket.SHUT_RDWR)
        except (OSError, StreamClosedError):
            pass
        finally:
            self._finalizer.detach()
            stream.close()

    def abort(self) -> None:
        stream, self.stream = self.stream, None
        self._closed = True
        if stream is not None and not stream.closed():
            self._finalizer.detach()
            stream.close()


class TLS(TCP):
    """A :class:`TCP` comm over TLS; ``extra_info`` has ``peercert`` and ``cipher``."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Some TLS stacks refuse records over a C int.
        self.max_shard_size = min(self.max_shard_size, frames.C_INT_MAX)

    def _read_extra(self) -> None:
        sock = self.stream.socket
        if sock is not None:
            self._extra.update(peercert=sock.getpeercert(), cipher=sock.cipher())


@contextlib.contextmanager
def connect_errors(address: str) -> Iterator[None]:
    """Raise what ``connect()`` promises for a stream that failed to open.

    TLS trust or negotiation failures are fatal (``connect`` must not retry
    them); a stream closed under us is a ``CommClosedError`` naming *address*.
    """
    try:
        yield
    except ssl.SSLCertVerificationError as exc:
        raise FatalCommClosedError(
            f"TLS certificate of {address} is not trusted or does not "
            f"match: {exc.verify_message}. Check your security settings."
        ) from exc
    except ssl.SSLError as exc:
        raise FatalCommClosedError(f"TLS negotiation with {address} failed: {exc}") from exc
    except StreamClosedError as exc:
        raise _closed_error(address, exc) from exc


def _expect_tls_context(connection_args: dict) -> ssl.SSLContext:
    context = connection_args.get("ssl_context")
    if not isinstance(context, ssl.SSLContext):
        raise TypeError(
            "TLS expects a `ssl_context` argument of type ssl.SSLContext "
            f"(perhaps check your TLS configuration?); got {context!r}"
        )
    return context


class _RequireEncryption:
    prefix: ClassVar[str]
    encrypted: ClassVar[bool]

    def _check_encryption(self, address: str, connection_args: dict) -> None:
        if not self.encrypted and connection_args.get("require_encryption"):
            raise RuntimeError(
                "encryption required by Dask configuration, "
                f"refusing communication from/to {self.prefix + address!r}"
            )


class _NumericFirstResolver(netutil.Resolver):
    """Resolve IP literals inline; only real host names go to a thread."""

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        try:
            infos = socket.getaddrinfo(
                host,
                port,
                family,
                socket.SOCK_STREAM,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
        except socket.gaierror as exc:
            if exc.errno != socket.EAI_NONAME:
                raise
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, family=family, type=socket.SOCK_STREAM
            )
        return [(fam, addr) for fam, _, _, _, addr in infos]


class TCPConnector(Connector, _RequireEncryption):
    """Opens :class:`TCP` comms."""

    prefix: ClassVar[str] = "tcp://"
    comm_class: ClassVar[type[TCP]] = TCP
    encrypted: ClassVar[bool] = False
    #: The codec given to new comms (``None``: :mod:`distributed_comm.protocol`).
    codec: ClassVar[Codec | None] = None
    client: ClassVar[TCPClient] = TCPClient(resolver=_NumericFirstResolver())

    def _connect_args(self, connection_args: dict) -> dict:
        return {}

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> TCP:
        self._check_encryption(address, connection_args)
        with connect_errors(self.prefix + address):
            stream = await self._open_stream(address, connection_args)
            if stream.closed():
                raise StreamClosedError(stream.error)
            local_address = self.prefix + _location(stream.socket.getsockname())
        try:
            return self.comm_class(
                stream,
                local_address,
                self.prefix + address,
                deserialize,
                codec=self.codec,
                allow_pickle=connection_args.get("allow_pickle"),
            )
        except BaseException:
            stream.close()
            raise

    async def _open_stream(self, address: str, connection_args: dict) -> IOStream:
        """A connected stream to *address* (unix overrides this)."""
        host, port = parse_host_port(address)
        tls_args = self._connect_args(connection_args)
        if "server_hostname" in tls_args:
            # Tornado's TCPClient would use the address as SNI name.
            stream = await self.client.connect(host, port)
            return await stream.start_tls(False, **tls_args)
        return await self.client.connect(host, port, **tls_args)


class TLSConnector(TCPConnector):
    """Opens :class:`TLS` comms; needs ``ssl_context=``, takes ``server_hostname=``."""

    prefix = "tls://"
    comm_class = TLS
    encrypted = True

    def _connect_args(self, connection_args: dict) -> dict:
        args: dict[str, Any] = {"ssl_options": _expect_tls_context(connection_args)}
        if connection_args.get("server_hostname"):
            args["server_hostname"] = connection_args["server_hostname"]
        return args


def _name_address(exc: OSError, address: str) -> None:
    """Make *exc* name *address*: the OS leaves it out of bind errors."""
    if exc.filename is None:
        exc.filename = address


def _bind_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for *host*; an ephemeral port that collides is retried.

    Binding IPv4 and IPv6 to the same ephemeral port can race with another
    process taking the port in between.
    """
    for _ in range(4 if port == 0 else 0):
        try:
            return netutil.bind_sockets(port, address=host or None, backlog=backlog)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    return netutil.bind_sockets(port, address=host or None, backlog=backlog)


class TCPListener(BaseListener, _RequireEncryption):
    """Accepts :class:`TCP` comms and hands each, handshaken, to ``comm_handler``."""

    prefix: ClassVar[str] = "tcp://"
    comm_class: ClassVar[type[TCP]] = TCP
    encrypted: ClassVar[bool] = False
    codec: ClassVar[Codec | None] = None

    def __init__(
        self,
        address: str,
        comm_handler: Callable[[Comm], Any],
        deserialize: bool = True,
        allow_offload: bool = True,
        default_host: str | None = None,
        default_port: int = 0,
        allow_pickle: bool | None = None,
        **connection_args: Any,
    ):
        super().__init__()
        self._check_encryption(address, connection_args)
        self._set_location(address, default_port)
        self.comm_handler = comm_handler
        self.deserialize = deserialize
        self.allow_offload = allow_offload
        if allow_pickle is None:
            allow_pickle = _current_settings().allow_pickle
        #: Whether peers may send pickles; False for untrusted clients.
        self.allow_pickle = bool(allow_pickle)
        if not self.allow_pickle:
            self.comm_class.check_can_refuse_pickles(self.codec)
        self.default_host = default_host
        self.server_args = self._server_args(connection_args)
        self.tcp_server: TCPServer | None = None
        self.bound_address: tuple | None = None
        self._negotiating: set[IOStream] = set()

    def _set_location(self, address: str, default_port: int) -> None:
        self.ip, self.port = parse_host_port(address, default_port)

    def _server_args(self, connection_args: dict) -> dict:
        return {}

    def _make_server(self) -> TCPServer:
        """A server that is not listening yet (ws serves HTTP instead)."""
        server = TCPServer(**self.server_args)
        server.handle_stream = self._handle_stream
        return server

    async def start(self) -> None:
        server = self._make_server()
        backlog = int(config.get("distributed.comm.socket-backlog"))
        try:
            sockets = _bind_sockets(self.ip, self.port, backlog)
        except OSError as exc:
            _name_address(exc, self.prefix + unparse_host_port(self.ip, self.port))
            raise
        server.add_sockets(sockets)
        self.tcp_server = server
        self.bound_address = get_tcp_server_address(server)

    def stop(self) -> None:
        """Stop accepting and abort comms still negotiating; established ones live on."""
        server, self.tcp_server = self.tcp_server, None
        if server is not None:
            server.stop()
        self.abort_handshaking_comms()
        streams, self._negotiating = self._negotiating, set()
        for stream in streams:
            stream.close()

    async def _prepare_stream(self, stream: IOStream, peer: str) -> bool:
        """Whether the stream is ready for the comm handshake (TLS negotiates here)."""
        return True

    async def _handle_stream(self, stream: IOStream, address: tuple | str) -> None:
        peer = self.prefix + _location(address)
        if not await self._prepare_stream(stream, peer):
            return
        if self.tcp_server is None or stream.closed():
            # stopped while negotiating: nobody would ever finish this handshake
            stream.close()
            return
        local = self.prefix + _location(stream.socket.getsockname())
        comm = self.comm_class(
            stream, local, peer, self.deserialize, codec=self.codec, allow_pickle=self.allow_pickle
        )
        await self._serve(comm)

    async def _serve(self, comm: Comm) -> None:
        """Handshake a freshly accepted comm, then hand it to ``comm_handler``."""
        peer = comm.peer_address
        comm.allow_offload = self.allow_offload
        try:
            await self.on_connection(comm)
        except Exception as exc:
            logger.info("dropped connection from %s before its handshake completed: %s", peer, exc)
            comm.abort()
            return
        logger.debug("incoming connection from %r to %r", peer, self.contact_address)
        try:
            result = self.comm_handler(comm)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # Otherwise the comm lingers until garbage collection and its peer hangs.
            logger.exception("handler of %r failed; closing the comm", comm)
            comm.abort()

    def get_host_port(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        if self.bound_address is None:
            raise ValueError(f"invalid operation on non-started {type(self).__name__}")
        return self.bound_address[:2]

    @property
    def listen_address(self) -> str:
        return self.prefix + unparse_host_port(*self.get_host_port())

    @property
    def contact_address(self) -> str:
        host, port = self.get_host_port()
        host = ensure_concrete_host(host, default_host=self.default_host)
        return self.prefix + unparse_host_port(host, port)


class TLSListener(TCPListener):
    """Accepts :class:`TLS` comms; a peer failing TLS negotiation is logged and dropped."""

    prefix = "tls://"
    comm_class = TLS
    encrypted = True

    def _server_args(self, connection_args: dict) -> dict:
        return {"ssl_options": _expect_tls_context(connection_args)}

    async def _prepare_stream(self, stream: IOStream, peer: str) -> bool:
        self._negotiating.add(stream)
        try:
            await stream.wait_for_handshake()
        except (OSError, StreamClosedError) as exc:
            cause = getattr(exc, "real_error", None) or exc
            # Tornado warns about TLS protocol errors itself (unless silenced, as dask
            # does): one line per peer is enough.
            logged = (
                isinstance(cause, ssl.SSLError)
                and cause.args[0] in _TORNADO_LOGS
                and _tornado_log.isEnabledFor(logging.WARNING)
            )
            logger.log(
                logging.DEBUG if logged else logging.WARNING,
                "listener on %r: TLS handshake with %r failed: %s",
                self.listen_address if self.bound_address else self.prefix,
                peer,
                cause,
            )
            stream.close()
            return False
        finally:
            self._negotiating.discard(stream)
        return True


class BaseTCPBackend(Backend):
    """Address handling shared by ``tcp`` and ``tls``: locations are ``host:port``."""

    _connector_class: type
    _listener_class: type

    def get_connector(self) -> Any:
        return self._connector_class()

    def get_listener(
        self, loc: str, handle_comm: Any, deserialize: bool, **connection_args: Any
    ) -> Any:
        return self._listener_class(loc, handle_comm, deserialize, **connection_args)

    def get_address_host(self, loc: str) -> str:
        return parse_host_port(loc)[0]

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        return parse_host_port(loc)

    def resolve_address(self, loc: str) -> str:
        host, port = parse_host_port(loc)
        return unparse_host_port(ensure_ip(host), port)

    def get_local_address_for(self, loc: str) -> str:
        host, _ = parse_host_port(loc)
        return unparse_host_port(get_ip(ensure_ip(host)), None)


class TCPBackend(BaseTCPBackend):
    _connector_class = TCPConnector
    _listener_class = TCPListener


class TLSBackend(BaseTCPBackend):
    _connector_class = TLSConnector
    _listener_class = TLSListener


backends["tcp"] = TCPBackend()
backends["tls"] = TLSBackend()
