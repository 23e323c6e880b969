"""What every transport promises: ``Comm``, ``Listener``, ``Connector``, and the
two entry points ``connect()`` (with retries) and ``listen()``.

This module knows no socket and no serialization format; transports are found
through :mod:`distributed_comm.registry` by the address's scheme.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import pickle
import random
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

from distributed_comm import config, registry
from distributed_comm.addressing import get_address_host, parse_address, resolve_address

logger = logging.getLogger(__name__)

__all__ = [
    "Comm",
    "CommClosedError",
    "Connector",
    "FatalCommClosedError",
    "Listener",
    "BaseListener",
    "connect",
    "listen",
]


class CommClosedError(IOError):
    """The comm is closed, or its peer went away or broke the protocol."""


class FatalCommClosedError(CommClosedError):
    """A failure that retrying cannot fix (for example an untrusted certificate)."""


def _negotiable_compression() -> str | None:
    """The compression this process offers in the handshake (``False`` means none)."""
    setting = config.get("distributed.comm.compression")
    if setting == "auto":
        return "lz4"
    return setting or None


class Comm(ABC):
    """One established, message-oriented channel to one peer.

    A comm has at most one reader and one writer at a time; open several
    comms to talk to the same peer concurrently.
    """

    name: str | None
    local_info: dict
    remote_info: dict
    handshake_options: dict
    deserialize: bool

    def __init__(self, deserialize: bool = True):
        self.allow_offload = True
        self.name = None
        self.local_info = {}
        self.remote_info = {}
        self.handshake_options = {}
        self.deserialize = deserialize

    @abstractmethod
    async def read(self, deserializers=None) -> Any:
        """Wait for the next message and return it."""

    @abstractmethod
    async def write(self, msg: Any, serializers=None, on_error=None) -> int:
        """Send *msg*; returns the bytes written (inproc returns 1, as distributed's does)."""

    @abstractmethod
    async def close(self) -> None:
        """Flush what is pending, then close."""

    @abstractmethod
    def abort(self) -> None:
        """Close now, dropping anything unsent (safe in ``finally`` and destructors)."""

    @abstractmethod
    def closed(self) -> bool:
        """Whether the comm is closed."""

    @property
    @abstractmethod
    def local_address(self) -> str:
        """This end's address."""

    @property
    @abstractmethod
    def peer_address(self) -> str:
        """The other end's address."""

    @property
    def same_host(self) -> bool:
        """Whether both ends are on this machine (compression is then pointless)."""
        local = get_address_host(resolve_address(self.local_address))
        return local == get_address_host(resolve_address(self.peer_address))

    @property
    def extra_info(self) -> dict:
        """Transport facts fixed at connection time (e.g. the TLS peer certificate)."""
        return {}

    def handshake_info(self) -> dict[str, Any]:
        """What this end tells its peer in the handshake (WIRE.md section 2)."""
        return {
            "compression": None if self.same_host else _negotiable_compression(),
            "python": tuple(sys.version_info)[:3],
            "pickle-protocol": pickle.HIGHEST_PROTOCOL,
        }

    @staticmethod
    def handshake_configuration(local: dict[str, Any], remote: dict[str, Any]) -> dict[str, Any]:
        """Settings both ends can use, from the two handshake messages."""
        try:
            protocol = min(local["pickle-protocol"], remote["pickle-protocol"])
        except KeyError as exc:
            raise ValueError(
                "The peer's handshake has no 'pickle-protocol': its dask/distributed "
                "version is not compatible with this one; use the same versions on "
                "client, scheduler and workers"
            ) from exc
        same = local["compression"] == remote["compression"]
        return {"pickle-protocol": protocol, "compression": local["compression"] if same else None}

    def __repr__(self) -> str:
        state = " (closed)" if self.closed() else ""
        return (
            f"<{type(self).__name__}{state} {self.name or ''} "
            f"local={self.local_address} remote={self.peer_address}>"
        )


async def _bounded(awaitable: Awaitable[Any], timeout: float) -> Any:
    """Await *awaitable* for at most *timeout* seconds (``TimeoutError`` after).

    ``asyncio.timeout`` (3.11+) runs it in the current task; ``wait_for`` on
    3.10 wraps it in a new task, which costs event-loop turns on every connect.
    """
    if _HAS_ASYNCIO_TIMEOUT:
        async with asyncio.timeout(timeout):
            return await awaitable
    return await asyncio.wait_for(awaitable, timeout)


_HAS_ASYNCIO_TIMEOUT = sys.version_info >= (3, 11)


async def _exchange(comm: Comm, local_info: dict[str, Any]) -> Any:
    await comm.write(local_info)
    return await comm.read()


async def _handshake(
    comm: Comm, overrides: dict[str, Any] | None, budget: float = float("inf")
) -> None:
    """Both ends write their info, then read the peer's (so neither blocks).

    Bounded by ``timeouts.handshake`` (or the caller's *budget*, if smaller) so a
    silent peer cannot hold a slot, or a ``connect(timeout=...)``, forever.
    """
    timeout = config.parse_timedelta(config.get("distributed.comm.timeouts.handshake"))
    timeout = min(timeout, budget)
    local_info = {**comm.handshake_info(), **(overrides or {})}
    try:
        remote_info = await _bounded(_exchange(comm, local_info), timeout)
    except asyncio.TimeoutError:
        comm.abort()
        raise CommClosedError(
            f"handshake with {comm.peer_address} timed out after {timeout:g} s"
        ) from None
    if not isinstance(remote_info, dict):
        comm.abort()
        raise CommClosedError(
            f"handshake from {comm.peer_address} is not a map: {type(remote_info).__name__}"
        )
    comm.remote_info = {**remote_info, "address": comm.peer_address}
    comm.local_info = {**local_info, "address": comm.local_address}
    comm.handshake_options = comm.handshake_configuration(comm.local_info, comm.remote_info)


class Listener(ABC):
    """Accepts connections on one address and hands each handshaken comm to a handler."""

    @abstractmethod
    async def start(self) -> None:
        """Begin accepting connections."""

    @abstractmethod
    def stop(self) -> None:
        """Stop accepting; comms already established keep working."""

    @property
    @abstractmethod
    def listen_address(self) -> str:
        """The address listened on, as a URI."""

    @property
    @abstractmethod
    def contact_address(self) -> str:
        """An address peers can connect to (a wildcard host made concrete)."""

    async def __aenter__(self) -> Listener:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stopped = self.stop()
        if inspect.isawaitable(stopped):
            await stopped

    def __await__(self):
        async def started() -> Listener:
            await self.start()
            return self

        return started().__await__()

    async def on_connection(
        self, comm: Comm, handshake_overrides: dict[str, Any] | None = None
    ) -> None:
        """Run the handshake on a freshly accepted comm."""
        await _handshake(comm, handshake_overrides)


class BaseListener(Listener):
    """A listener that remembers comms still in their handshake, so ``stop`` can abort them."""

    def __init__(self) -> None:
        self._handshaking: set[Comm] = set()

    async def on_connection(
        self, comm: Comm, handshake_overrides: dict[str, Any] | None = None
    ) -> None:
        self._handshaking.add(comm)
        try:
            await super().on_connection(comm, handshake_overrides)
        finally:
            self._handshaking.discard(comm)

    def abort_handshaking_comms(self) -> None:
        """Abort every comm whose handshake has not finished."""
        comms, self._handshaking = self._handshaking, set()
        for comm in comms:
            comm.abort()


class Connector(ABC):
    """Opens comms for one scheme."""

    @abstractmethod
    async def connect(self, address: str, deserialize: bool = True) -> Comm:
        """A comm to *address* (scheme removed), before the handshake.

        Transports accept their own keyword arguments too (``ssl_context``...).

        Raises ``OSError`` when the peer is unreachable (``connect`` retries),
        ``FatalCommClosedError`` when retrying cannot help, ``ValueError`` for a
        malformed address.
        """


_BACKOFF_BASE = 0.01


async def connect(
    addr: str,
    timeout: str | float | None = None,
    deserialize: bool = True,
    handshake_overrides: dict[str, Any] | None = None,
    **connection_args: Any,
) -> Comm:
    """Connect to *addr* (``"tcp://127.0.0.1:8786"``) and return a handshaken comm.

    Failed attempts are retried with full-jitter exponential backoff until
    *timeout* (default ``timeouts.connect``); the first attempts are capped at a
    fifth of it so one slow attempt (a DNS hiccup) does not eat the whole budget.
    The handshake must finish within what is left of *timeout* too.
    """
    if timeout is None:
        timeout = config.get("distributed.comm.timeouts.connect")
    timeout = config.parse_timedelta(timeout)
    if not timeout >= 0:  # also catches NaN
        raise ValueError(f"connect timeout must be a number of seconds >= 0, got {timeout!r}")
    scheme, loc = parse_address(addr)
    connector = registry.get_backend(scheme).get_connector()

    deadline = time.monotonic() + timeout
    attempt_cap = timeout / 5
    attempt = 0
    last_error: BaseException | None = None
    while (left := deadline - time.monotonic()) > 0:
        try:
            comm = await _bounded(
                connector.connect(loc, deserialize=deserialize, **connection_args),
                min(attempt_cap, left),
            )
            break
        except FatalCommClosedError:
            raise
        except (asyncio.TimeoutError, OSError) as exc:
            last_error = exc
            attempt_cap = timeout
            pause = random.uniform(0, min(deadline - time.monotonic(), _BACKOFF_BASE * 2**attempt))
            attempt += 1
            logger.debug("connect to %s failed (%s); retrying in %.3f s", addr, exc, pause)
            await asyncio.sleep(max(pause, 0))
    else:
        raise OSError(f"Timed out trying to connect to {addr} after {timeout} s") from last_error

    try:
        await _handshake(comm, handshake_overrides, max(deadline - time.monotonic(), 0))
    except BaseException:
        comm.abort()
        raise
    return comm


def listen(
    addr: str,
    handle_comm: Callable[[Comm], Awaitable[None] | None],
    deserialize: bool = True,
    **kwargs: Any,
) -> Listener:
    """A listener on *addr* calling *handle_comm* (sync or async) per handshaken comm.

    Call (or await) its ``start()`` to begin. Without a scheme, ``tls`` is used
    when an ``ssl_context`` is given, ``tcp`` otherwise.
    """
    try:
        scheme, loc = parse_address(addr, strict=True)
    except ValueError:
        default = "tls" if kwargs.get("ssl_context") else "tcp"
        scheme, loc = parse_address(f"{default}://{addr}", strict=True)
    return registry.get_backend(scheme).get_listener(loc, handle_comm, deserialize, **kwargs)
