"""pyzmq baseline: DEALER clients against one ROUTER server, no serialization.

Round trips are a ping echoed by the ROUTER; throughput sends two-part
messages (operation, payload) with ``copy=False``; the last one of a burst
asks for an ack, sent once the server has received it.  ``unix`` maps to
zmq's ``ipc://``.  zmq connects lazily, so "connect" is timed up to the
first answered ping, like the comms' handshake.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import zmq

from benchmarks.workloads import (
    ACK_FRAME,
    DATA,
    DATA_ACK,
    PING_FRAME,
    TIMEOUT,
    burst_throughput,
    connect_rate,
)
from distributed_comm.frames import nbytes

TRANSPORTS = ("tcp", "unix")


def _endpoint(address: str) -> str:
    scheme, _, location = address.partition("://")
    return f"ipc://{location}" if scheme == "unix" else f"tcp://{location}"


def _dealer(address: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = sock.sndtimeo = int(TIMEOUT * 1000)  # a dead server raises, never hangs
    sock.connect(_endpoint(address))
    return sock


class ZMQClient:
    """A :class:`benchmarks.workloads.Client` over pyzmq DEALER sockets."""

    def __init__(self, address: str, tls: object = None):
        self._address = address
        self._main = _dealer(address)
        self._crowd: list[zmq.Socket] = []

    def roundtrip(self, seconds: float) -> float:
        return _roundtrips([self._main], seconds)

    def concurrent(self, comms: int, seconds: float) -> float:
        while len(self._crowd) < comms:
            self._crowd.append(_dealer(self._address))
        return _roundtrips(self._crowd[:comms], seconds)

    def connect(self, seconds: float) -> float:

        def open_and_greet():
            sock = _dealer(self._address)
            sock.send(PING_FRAME)
            sock.recv()
            return sock.close

        return connect_rate(open_and_greet, seconds)

    def throughput(self, payload: Any, seconds: float) -> float:
        return burst_throughput(lambda count: self._burst(payload, count), nbytes(payload), seconds)

    def _burst(self, payload: Any, count: int) -> float:
        start = time.perf_counter()
        for i in range(1, count + 1):
            self._main.send_multipart([DATA_ACK if i == count else DATA, payload], copy=False)
        reply = self._main.recv()
        elapsed = time.perf_counter() - start
        if reply != ACK_FRAME:
            raise RuntimeError(f"expected an ack from the zmq server, got {reply!r}")
        return elapsed

    def close(self) -> None:
        for sock in [self._main, *self._crowd]:
            sock.close()


def _roundtrips(socks: list[zmq.Socket], seconds: float) -> float:
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for sock in socks:
            sock.send(PING_FRAME)
        for sock in socks:
            sock.recv()
        count += len(socks)
        if time.perf_counter() >= deadline:
            return count / (time.perf_counter() - start)


def serve(scheme: str, address: str, tls: object = None) -> str:
    """Bind a ROUTER on *address* and serve it from a background thread."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.linger = 0
    if scheme == "unix":
        router.bind(_endpoint(address))
        contact = address
    else:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        contact = f"tcp://127.0.0.1:{port}"
    threading.Thread(target=_serve, args=(router,), daemon=True).start()
    return contact


def _serve(router: zmq.Socket) -> None:
    while True:
        identity, head, *_ = router.recv_multipart(copy=False)
        op = head.bytes[:1]
        if op == PING_FRAME[:1]:
            router.send_multipart([identity, PING_FRAME])
        elif op == DATA_ACK:
            router.send_multipart([identity, ACK_FRAME])
