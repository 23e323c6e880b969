"""Messages over a connected socket, on Tornado's event loop.

Tornado opens the connection (``TCPClient``, ``TCPServer``, the TLS
handshake in ``SSLIOStream``); then :class:`SocketStream` takes the socket
over from the ``IOStream`` and moves frames itself. Why: an ``IOStream`` read
registers, waits, buffers and resolves a future per call, which costs about
as much as a whole small-message round trip. Here the socket stays
registered for reading, every readiness event receives as much as is there
(many small messages at once, or straight into a large frame's own buffer,
see :class:`~distributed_comm.frames.Decoder`), and a reader waits only when
no complete message is queued. Writes go out at once, several buffers per
system call (``sendmsg``), and only what the kernel does not take is queued.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence

from tornado.iostream import IOStream, StreamClosedError

from distributed_comm import frames

__all__ = ["SocketStream", "take_socket"]

#: ``sendmsg`` takes at most this many buffers per call (``IOV_MAX`` on Linux)...
_MAX_BUFFERS = 1024
#: ...and we offer it about this many bytes: more than a socket buffer takes at
#: once, without handing over (and Python preparing) buffers it will not send.
_SEND_BATCH = 2**22
#: Stop reading ahead while this many complete messages wait to be read, or
#: this many bytes: a slow reader must not make us buffer without limit, and a
#: large message is taken (and often dropped) before the next one's buffer is
#: allocated, so the allocator can give back the same memory instead of fresh
#: pages (1 MiB messages: 0.25-0.53x raw sockets with a 64 MiB limit, 0.68-0.87x
#: with this one, when the reader drops each message before reading the next).
_MAX_QUEUED_MESSAGES = 1024
_MAX_QUEUED_BYTES = 2**19
#: One receive asks for at most this much: the copy out of the kernel stays
#: in cache and the sender gets room back sooner (measured ~1.1x faster on
#: 16-128 MiB frames than asking for the whole rest of the frame at once).
_MAX_RECV = 2**18
#: After this much, a readiness event yields to the loop so that one busy
#: comm cannot starve the others (the socket stays readable: it comes back).
_MAX_READ_PER_EVENT = 2**24
#: The socket has nothing more for now (or TLS needs more bytes first).
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def take_socket(stream: IOStream) -> tuple[socket.socket, bytes]:
    """Take the connected socket out of an idle Tornado stream.

    Returns the socket and any bytes the stream had already read from it.
    The stream must not be used afterwards (Tornado's own ``start_tls``
    hands a socket over the same way).
    """
    if stream.closed():
        raise StreamClosedError(real_error=stream.error)
    sock = stream.socket
    stream.io_loop.remove_handler(sock)
    stream._state = None  # nothing is registered for it any more
    buffered = bytes(stream._read_buffer[: stream._read_buffer_size])
    stream.socket = None
    return sock, buffered


class SocketStream:
    """A connected non-blocking socket carrying framed messages.

    :meth:`read_message` returns the next message's frames; :meth:`write`
    queues buffers for sending; :meth:`drain` waits until all are sent.
    A broken connection or framing closes the stream: queued complete
    messages are still handed out, then the reader gets the error
    (``StreamClosedError``, or ``ValueError`` for a peer that broke the
    framing or the limits).
    """

    def __init__(self, sock: socket.socket, limits: frames.Limits, buffered: bytes = b"") -> None:
        sock.setblocking(False)
        self.socket = sock
        self._decoder = frames.Decoder(limits, _MAX_QUEUED_MESSAGES, _MAX_QUEUED_BYTES)
        self._messages = self._decoder.messages
        self._reader: asyncio.Future | None = None
        self._writes: deque[frames.Buffer] = deque()
        self._drainers: list[asyncio.Future] = []
        self._error: BaseException | None = None
        self._close_callback: Callable[[], None] | None = None
        self._closed = False
        self._close_when_sent = False
        self._loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        self._reading = True  # registered for readability
        self._waiting_to_send = False  # registered for writability
        self._tls = isinstance(sock, ssl.SSLSocket)
        #: Several buffers per system call (TLS and Windows sockets have no ``sendmsg``).
        self._gather = not self._tls and hasattr(sock, "sendmsg")
        self._loop.add_reader(self._fd, self._on_readable)
        try:
            self._decoder.feed(buffered)
        except ValueError as exc:
            self._fail(exc)
            return
        self._arrived(0)
        self._read_on_if_tls_holds_bytes()

    def closed(self) -> bool:
        return self._closed

    @property
    def error(self) -> BaseException | None:
        """Why the stream closed, if it failed."""
        return self._error

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        """Call *callback* once when the stream closes, however it does."""
        self._close_callback = callback

    # -- reading ------------------------------------------------------------

    async def read_message(self) -> tuple[list[memoryview], int]:
        """The next message's frames and total size."""
        if not self._messages:
            if self._closed:
                raise self._read_error()
            if self._reader is not None:
                raise RuntimeError(f"{self!r} is already being read by another task")
            self._reader = self._loop.create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        frames_, size = self._decoder.pop()
        if not self._reading and not self._decoder.full:
            self._resume()
        return frames_, size

    def _resume(self) -> None:
        """The queue has room again: parse what was held back (messages that
        arrived before the stream closed are still handed out), and read
        ahead again if that leaves room."""
        queued = len(self._messages)
        try:
            self._decoder.resume()
        except ValueError as exc:  # what was held back breaks the limits
            self._error = self._error or exc  # heard after the messages before it
            self.close()
            return
        if self._closed:
            return
        self._arrived(queued)
        if not self._decoder.full:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)
            self._read_on_if_tls_holds_bytes()

    def _read_on_if_tls_holds_bytes(self) -> None:
        """Come back for bytes TLS has decrypted but we have not taken (a read
        cut short by its budget or by back-pressure): no readiness event
        would announce them."""
        if self._tls and self._reading and not self._closed and self.socket.pending():
            self._loop.call_soon(self._on_readable)

    def _on_readable(self) -> None:
        if self._closed or not self._reading:  # (a TLS catch-up call after the queue filled)
            return
        decoder, recv_into, tls = self._decoder, self.socket.recv_into, self._tls
        queued = len(self._messages)
        budget = _MAX_READ_PER_EVENT
        try:
            while budget > 0:
                target = decoder.buffer()[:_MAX_RECV]
                count = recv_into(target)
                if not count:
                    raise StreamClosedError()
                decoder.received(count)
                budget -= count
                if decoder.full:
                    break  # the decoder parses no more, so receive no more
                # Small messages: a short read means the kernel has nothing
                # more, and asking again would only fail. Inside a large frame
                # (or over TLS, one 16 KiB record per call) more keeps coming
                # while we copy: ask until the socket says it has none.
                if count < target.nbytes and not tls and not decoder.in_frame:
                    break
        except _WOULD_BLOCK:
            pass
        except Exception as exc:  # noqa: BLE001 - whatever broke, this stream cannot go on
            self._fail(exc)
            return
        self._arrived(queued)
        self._read_on_if_tls_holds_bytes()

    def _arrived(self, queued: int) -> None:
        """The messages after the first *queued* just arrived: stop reading
        if the queue is at its limits, and wake the waiting reader."""
        if self._reading and self._decoder.full:
            self._reading = False
            self._loop.remove_reader(self._fd)
        if len(self._messages) == queued:
            return
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    # -- writing ------------------------------------------------------------

    def write(self, parts: Sequence[frames.Buffer]) -> None:
        """Send *parts* (byte buffers) in order, queueing what the kernel does
        not take now. The buffers are referenced, not copied, until sent."""
        if self._closed:
            raise self._closed_error()
        writes = self._writes
        was_idle = not writes
        for part in parts:
            if frames.nbytes(part):  # an empty one would never count as sent
                writes.append(part)
        if was_idle and writes:
            self._flush()
            if self._closed:
                raise self._closed_error()

    def writing(self) -> bool:
        """Whether some written bytes are not sent yet."""
        return bool(self._writes)

    async def drain(self) -> None:
        """Wait until everything written is sent."""
        if self._writes and not self._closed:
            waiter = self._loop.create_future()
            self._drainers.append(waiter)
            await waiter
        if self._closed and self._error is not None:
            raise self._closed_error()

    def _flush(self) -> None:
        writes, sock = self._writes, self.socket
        try:
            while writes:
                if self._gather and len(writes) > 1:
                    sent = sock.sendmsg(_batch(writes))
                else:
                    sent = sock.send(writes[0])
                if not _consume(writes, sent):
                    break  # the kernel took less: wait until it has room
        except _WOULD_BLOCK:
            pass
        except Exception as exc:  # noqa: BLE001 - whatever broke, this stream cannot go on
            self._fail(exc)
            return
        if writes:
            if not self._waiting_to_send:
                self._waiting_to_send = True
                self._loop.add_writer(self._fd, self._flush)
            return
        if self._close_when_sent:
            self.close()
            return
        if self._waiting_to_send:
            self._waiting_to_send = False
            self._loop.remove_writer(self._fd)
        if self._drainers:
            drainers, self._drainers = self._drainers, []
            for waiter in drainers:
                if not waiter.done():
                    waiter.set_result(None)

    # -- events and closing ---------------------------------------------------

    def _closed_error(self) -> StreamClosedError:
        return StreamClosedError(real_error=self._error)

    def _read_error(self) -> BaseException:
        """What a reader gets once the messages run out: a peer that broke
        the framing or the limits is a ``ValueError`` saying how."""
        if isinstance(self._error, ValueError):
            return self._error
        return self._closed_error()

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, StreamClosedError):  # the peer closed: no error of ours
            exc = exc.real_error
        self._error = exc
        self.close()

    def close_after_writes(self) -> None:
        """Close once everything written is sent (at once if nothing is pending),
        with no task to wait on it: for a comm nobody holds any more."""
        if not self._writes:
            self.close()
        else:
            self._close_when_sent = True

    def close(self) -> None:
        """Close the socket at once; waiting readers and drainers get the error."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self.socket.close()
        self._writes.clear()
        reader = self._reader
        if reader is not None and not reader.done():
            if self._messages:
                reader.set_result(None)  # messages that arrived before the end come first
            else:
                _fail_waiter(reader, self._read_error())
        for waiter in self._drainers:
            _fail_waiter(waiter, self._closed_error())
        self._drainers = []
        callback, self._close_callback = self._close_callback, None
        if callback is not None:
            callback()


def _fail_waiter(waiter: asyncio.Future, error: BaseException) -> None:
    if not waiter.done():
        waiter.set_exception(error)
        waiter.exception()  # retrieved: its task may be gone already


def _batch(buffers: deque) -> list:
    """The leading buffers one ``sendmsg`` call is offered."""
    batch, size = [], 0
    for buffer in buffers:
        batch.append(buffer)
        size += frames.nbytes(buffer)
        if size >= _SEND_BATCH or len(batch) == _MAX_BUFFERS:
            break
    return batch


def _consume(buffers: deque, sent: int) -> bool:
    """Drop *sent* bytes off the front of *buffers*; whether all of them went."""
    while sent:
        first = buffers[0]
        size = frames.nbytes(first)
        if sent < size:
            buffers[0] = memoryview(first)[sent:]
            return False
        buffers.popleft()
        sent -= size
    return True
