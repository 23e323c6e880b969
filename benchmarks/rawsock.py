"""Raw blocking sockets: the practical upper bound for a byte-stream transport.

The same framing as the comms (frame count and lengths as ``<Q``, then the
frames), written with ``sendall`` and read with ``readinto`` straight into a
fresh ``numpy.empty`` buffer; no serialization, one thread per connection on
the server.  Supports ``tcp``, ``tls`` and ``unix`` addresses.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, BinaryIO

import numpy

from benchmarks import tlscerts
from benchmarks.workloads import (
    ACK_FRAME,
    DATA,
    DATA_ACK,
    PING_FRAME,
    TIMEOUT,
    burst_throughput,
    connect_rate,
)
from distributed_comm.frames import U64, nbytes, pack_frames_prelude

TRANSPORTS = ("tcp", "tls", "unix")
_JOIN_LIMIT = 2**16  # payloads up to this are sent in one call with their prelude


def send_message(sock: socket.socket, op: bytes, payload: Any = None) -> None:
    if payload is None:
        sock.sendall(pack_frames_prelude([op]) + op)
        return
    view = memoryview(payload).cast("B")
    head = pack_frames_prelude([op, view]) + op
    if view.nbytes <= _JOIN_LIMIT:
        sock.sendall(b"".join((head, view)))
    else:
        sock.sendall(head)
        sock.sendall(view)


def _read_exactly(reader: BinaryIO, size: int) -> numpy.ndarray:
    buffer = numpy.empty(size, dtype="u1")
    view = memoryview(buffer)
    while view.nbytes:
        n = reader.readinto(view)
        if not n:
            raise EOFError("peer closed the connection")
        view = view[n:]
    return buffer


def recv_message(reader: BinaryIO) -> list[numpy.ndarray]:
    (count,) = U64.unpack(_read_exactly(reader, U64.size))
    lengths = _read_exactly(reader, U64.size * count).view("<u8")
    return [_read_exactly(reader, int(length)) for length in lengths]


def _parse(address: str) -> tuple[str, Any]:
    scheme, _, location = address.partition("://")
    if scheme == "unix":
        return scheme, location
    host, _, port = location.rpartition(":")
    return scheme, (host, int(port))


def _open(address: str, tls: tlscerts.TLSFiles | None) -> socket.socket:
    scheme, target = _parse(address)
    if scheme == "unix":
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(TIMEOUT)
        sock.connect(target)
        return sock
    sock = socket.create_connection(target, timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if scheme == "tls":
        sock = tlscerts.client_context(tls).wrap_socket(sock, server_hostname=target[0])
    return sock


class _Connection:
    def __init__(self, address: str, tls: tlscerts.TLSFiles | None):
        self.sock = _open(address, tls)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class RawClient:
    """A :class:`benchmarks.workloads.Client` over blocking sockets."""

    def __init__(self, address: str, tls: tlscerts.TLSFiles | None):
        self._address, self._tls = address, tls
        self._main = _Connection(address, tls)
        self._crowd: list[_Connection] = []

    def roundtrip(self, seconds: float) -> float:
        return _roundtrips([self._main], seconds)

    def concurrent(self, comms: int, seconds: float) -> float:
        while len(self._crowd) < comms:
            self._crowd.append(_Connection(self._address, self._tls))
        return _roundtrips(self._crowd[:comms], seconds)

    def connect(self, seconds: float) -> float:
        """Connect (and TLS handshake) plus one round trip, standing in for the comm handshake."""

        def open_and_greet():
            connection = _Connection(self._address, self._tls)
            send_message(connection.sock, PING_FRAME)
            recv_message(connection.reader)
            return connection.close

        return connect_rate(open_and_greet, seconds)

    def throughput(self, payload: Any, seconds: float) -> float:
        return burst_throughput(lambda count: self._burst(payload, count), nbytes(payload), seconds)

    def _burst(self, payload: Any, count: int) -> float:
        start = time.perf_counter()
        for i in range(1, count + 1):
            send_message(self._main.sock, DATA_ACK if i == count else DATA, payload)
        reply = recv_message(self._main.reader)[0].tobytes()
        elapsed = time.perf_counter() - start
        if reply != ACK_FRAME:
            raise RuntimeError(f"expected an ack from the raw server, got {reply!r}")
        return elapsed

    def close(self) -> None:
        for connection in [self._main, *self._crowd]:
            connection.close()


def _roundtrips(connections: list[_Connection], seconds: float) -> float:
    """Ping every connection, then collect every answer, until the time box ends."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for connection in connections:
            send_message(connection.sock, PING_FRAME)
        for connection in connections:
            recv_message(connection.reader)
        count += len(connections)
        if time.perf_counter() >= deadline:
            return count / (time.perf_counter() - start)


def serve(scheme: str, address: str, tls: tlscerts.TLSFiles | None) -> str:
    """Listen on *address* in a background thread; returns the address to connect to."""
    if scheme == "unix":
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(_parse(address)[1])
        contact = address
    else:
        listener = socket.create_server(_parse(address)[1])
        contact = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}"
    listener.listen(2048)
    context = tlscerts.server_context(tls) if scheme == "tls" else None
    threading.Thread(target=_accept, args=(listener, context), daemon=True).start()
    return contact


def _accept(listener: socket.socket, context) -> None:
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=_serve_connection, args=(sock, context), daemon=True).start()


def _serve_connection(sock: socket.socket, context) -> None:
    try:
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            sock = context.wrap_socket(sock, server_side=True)
        with sock, sock.makefile("rb") as reader:
            while True:
                op = recv_message(reader)[0][:1].tobytes()
                if op == PING_FRAME[:1]:
                    send_message(sock, PING_FRAME)
                elif op == DATA_ACK:
                    send_message(sock, ACK_FRAME)
    except (EOFError, OSError):
        pass
