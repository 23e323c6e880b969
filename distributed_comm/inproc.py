"""``inproc://``: comms between two ends in the same process, by reference.

No bytes, no serialization, no I/O: each comm reads from its own inbox and
writes into its peer's.  An inbox belongs to the reader's event loop, so a
writer on the same loop puts into it directly (the fast path) and a writer on
another thread's loop hands the put to the reader's loop with
``call_soon_threadsafe``; the inbox itself therefore needs no lock.

Addresses are ``inproc://<ip>/<pid>/<n>`` and only reachable in this process.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import sys
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from distributed_comm.core import BaseListener, Comm, CommClosedError, Connector
from distributed_comm.protocol import nested_deserialize
from distributed_comm.registry import Backend, backends
from distributed_comm.utils import get_ip

logger = logging.getLogger(__name__)

__all__ = ["InProc", "InProcBackend", "InProcConnector", "InProcListener", "Manager", "new_address"]

PREFIX = "inproc://"


class Manager:
    """The process-wide table of listening addresses."""

    def __init__(self) -> None:
        # Weak values: a listener dropped without stop() stops being reachable.
        self._listeners: weakref.WeakValueDictionary[str, InProcListener] = (
            weakref.WeakValueDictionary()
        )
        self._suffixes = itertools.count(1)
        self._lock = threading.Lock()
        self._ip: str | None = None

    @property
    def ip(self) -> str:
        """This machine's IP, the host part of every inproc address (looked up once)."""
        if self._ip is None:
            try:
                self._ip = get_ip()
            except OSError:
                self._ip = "127.0.0.1"
        return self._ip

    def new_address(self) -> str:
        """A location (no scheme) that nothing has used yet in this process."""
        return f"{self.ip}/{os.getpid()}/{next(self._suffixes)}"

    def validate_address(self, loc: str) -> None:
        """``ValueError`` unless *loc* is an ``<ip>/<pid>/<n>`` of this process."""
        parts = loc.split("/")
        if len(parts) != 3 or not parts[1].isdigit():
            raise ValueError(f"invalid inproc address {loc!r}: expected '<ip>/<pid>/<n>'")
        ip, pid, _ = parts
        if ip != self.ip or int(pid) != os.getpid():
            raise ValueError(
                f"inproc address {loc!r} belongs to another process: this one is "
                f"host {self.ip!r}, pid {os.getpid()}"
            )

    def add_listener(self, loc: str, listener: InProcListener) -> None:
        with self._lock:
            if loc in self._listeners:
                raise RuntimeError(f"already listening on {PREFIX}{loc}")
            self._listeners[loc] = listener

    def remove_listener(self, loc: str, listener: InProcListener) -> None:
        with self._lock:
            if self._listeners.get(loc) is listener:
                del self._listeners[loc]

    def get_listener_for(self, loc: str) -> InProcListener | None:
        self.validate_address(loc)
        with self._lock:
            return self._listeners.get(loc)


global_manager = Manager()


def new_address() -> str:
    """A fresh ``inproc://`` address of this process."""
    return PREFIX + global_manager.new_address()


_EOF = object()  # put into an inbox by close/abort: end of stream


class _Inbox:
    """A single-reader FIFO, only touched from its reader's event loop."""

    __slots__ = ("items", "_waiter", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.items: deque[Any] = deque()
        self._waiter: asyncio.Future | None = None
        self._loop = loop

    def put(self, item: Any) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():  # a cancelled read must not swallow the item
                waiter.set_result(item)
                return
        self.items.append(item)

    def wait(self) -> asyncio.Future:
        """A future of the next item; only call when ``items`` is empty."""
        if self._waiter is not None and not self._waiter.done():
            raise RuntimeError("an inproc comm allows only one read() at a time")
        waiter = self._waiter = self._loop.create_future()
        return waiter

    def at_eof(self) -> bool:
        return bool(self.items) and self.items[0] is _EOF


def _put_from_any_thread(inbox: _Inbox, loop: asyncio.AbstractEventLoop, item: Any) -> None:
    """Put *item* into *inbox* on its own loop; ``RuntimeError`` if that loop is closed."""
    loop.call_soon_threadsafe(inbox.put, item)


def _send_eof_on_collect(inbox: _Inbox, loop: asyncio.AbstractEventLoop, name: str) -> None:
    """Finalizer: a comm dropped without close() must not leave its peer waiting forever."""
    if sys.is_finalizing():
        return
    logger.warning("closing inproc comm %s that was garbage collected while open", name)
    try:
        _put_from_any_thread(inbox, loop, _EOF)
    except RuntimeError:  # the peer's loop is gone, and the peer with it
        pass


class InProc(Comm):
    """One end of an in-process comm.

    Like every comm it is used from one thread; its peer may live on another
    thread's event loop.
    """

    def __init__(self, local_addr: str, peer_addr: str, deserialize: bool = True) -> None:
        super().__init__(deserialize=deserialize)
        self._local_addr = local_addr
        self._peer_addr = peer_addr
        self._loop = asyncio.get_running_loop()
        self._inbox = _Inbox(self._loop)
        self._outbox: _Inbox | None = None
        self._peer_loop: asyncio.AbstractEventLoop | None = None
        self._same_loop = True
        self._closed = False
        self._finalizer: weakref.finalize | None = None

    def _pair_with(self, peer: InProc) -> None:
        """Make *peer*'s inbox this comm's outbox."""
        self._outbox = peer._inbox
        self._peer_loop = peer._loop
        self._same_loop = peer._loop is self._loop
        self._finalizer = weakref.finalize(
            self, _send_eof_on_collect, peer._inbox, peer._loop, self._local_addr
        )
        self._finalizer.atexit = False

    @property
    def local_address(self) -> str:
        return self._local_addr

    @property
    def peer_address(self) -> str:
        return self._peer_addr

    @property
    def same_host(self) -> bool:
        return True

    async def read(self, deserializers: Any = None) -> Any:
        if self._closed:
            raise CommClosedError(f"{self!r}: read on a closed comm")
        items = self._inbox.items
        msg = items.popleft() if items else await self._inbox.wait()
        if msg is _EOF:
            self._mark_closed()
            raise CommClosedError(f"{self!r}: the peer closed the comm")
        return nested_deserialize(msg, self.deserialize)

    async def write(self, msg: Any, serializers: Any = None, on_error: Any = None) -> int:
        """Hand *msg* to the peer by reference; returns 1 (as distributed's inproc does)."""
        if self.closed():
            raise CommClosedError(f"{self!r}: write on a closed comm")
        self._deliver(msg)
        return 1

    def _deliver(self, item: Any) -> None:
        if self._same_loop:
            self._outbox.put(item)
            return
        try:
            _put_from_any_thread(self._outbox, self._peer_loop, item)
        except RuntimeError:  # the peer's event loop is closed
            self.abort()
            raise CommClosedError(f"{self!r}: the peer's event loop is closed") from None

    async def close(self) -> None:
        """Nothing is ever buffered on this side, so closing is aborting."""
        self.abort()

    def abort(self) -> None:
        if self._closed:
            return
        self._mark_closed()
        self._inbox.put(_EOF)  # wakes a read() pending on this end
        if self._outbox is not None:
            try:
                self._deliver(_EOF)
            except CommClosedError:
                pass

    def _mark_closed(self) -> None:
        self._closed = True
        if self._finalizer is not None:
            self._finalizer.detach()

    def closed(self) -> bool:
        """Closed here, or the peer closed and every message it sent has been read."""
        if not self._closed and self._inbox.at_eof():
            self._mark_closed()
        return self._closed


class InProcListener(BaseListener):
    """Accepts inproc connections on one address and runs *handle_comm* for each."""

    def __init__(
        self,
        loc: str,
        handle_comm: Callable[[Comm], Awaitable[None] | None],
        deserialize: bool = True,
        manager: Manager = global_manager,
    ) -> None:
        super().__init__()
        self._manager = manager
        if loc:
            manager.validate_address(loc)
        self._loc = loc or manager.new_address()
        self._handle_comm = handle_comm
        self._deserialize = deserialize
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._manager.add_listener(self._loc, self)
        self._accepting = True

    def stop(self) -> None:
        """Refuse new connections and abort handshakes in flight; open comms keep working."""
        self._accepting = False
        self._manager.remove_listener(self._loc, self)
        self.abort_handshaking_comms()

    @property
    def listen_address(self) -> str:
        return PREFIX + self._loc

    @property
    def contact_address(self) -> str:
        return PREFIX + self._loc

    def request_connection(self, client: InProc, accepted: asyncio.Future) -> None:
        """Called on the connector's loop: pass *client* on to this listener's loop."""
        if self._loop is client._loop:
            self._accept(client, accepted)
            return
        try:
            self._loop.call_soon_threadsafe(self._accept, client, accepted)
        except RuntimeError:
            raise OSError(f"{self.listen_address}: the listener's event loop is closed") from None

    def _accept(self, client: InProc, accepted: asyncio.Future) -> None:
        """On this listener's loop: pair a server end with *client*, tell the connector."""
        if self._accepting and not client._closed:  # the connector may have given up
            server = InProc(self.listen_address, client.local_address, self._deserialize)
            server._pair_with(client)
            client._pair_with(server)
            result: Any = None
            task = self._loop.create_task(self._serve(server))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            result = OSError(f"{self.listen_address} stopped listening")
        client._loop.call_soon_threadsafe(_settle, accepted, result)

    async def _serve(self, comm: InProc) -> None:
        try:
            await self.on_connection(comm)
        except Exception as exc:
            logger.debug("inproc handshake from %s failed: %s", comm.peer_address, exc)
            comm.abort()
            return
        try:
            handled = self._handle_comm(comm)
            if inspect.isawaitable(handled):
                await handled
        except Exception:
            logger.exception("handler of inproc comm %r failed; closing the comm", comm)
            comm.abort()


def _settle(future: asyncio.Future, result: Any) -> None:
    if future.done():  # the connector gave up waiting
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class InProcConnector(Connector):
    def __init__(self, manager: Manager = global_manager) -> None:
        self._manager = manager

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> Comm:
        listener = self._manager.get_listener_for(address)
        if listener is None:
            raise OSError(f"no listener on inproc address {PREFIX}{address}")
        client = InProc(PREFIX + self._manager.new_address(), PREFIX + address, deserialize)
        accepted = asyncio.get_running_loop().create_future()
        listener.request_connection(client, accepted)
        try:
            await accepted
        except asyncio.CancelledError:
            client.abort()  # accepted meanwhile: the server end sees end-of-stream
            raise
        return client


class InProcBackend(Backend):
    manager = global_manager

    def get_connector(self) -> InProcConnector:
        return InProcConnector(self.manager)

    def get_listener(
        self, loc: str, handle_comm: Any, deserialize: bool, **connection_args: Any
    ) -> InProcListener:
        return InProcListener(loc, handle_comm, deserialize, self.manager)

    def get_address_host(self, loc: str) -> str:
        self.manager.validate_address(loc)
        return self.manager.ip

    def resolve_address(self, loc: str) -> str:
        return loc

    def get_local_address_for(self, loc: str) -> str:
        self.manager.validate_address(loc)
        return self.manager.new_address()


backends["inproc"] = InProcBackend()
