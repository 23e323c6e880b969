"""The workloads, written once against a comm module's public API.

``distributed_comm`` and ``distributed.comm`` share ``connect``, ``listen``,
``Comm.read/write`` and ``to_serialize``, so one client and one server serve
both; only the module names differ (:data:`COMM_MODULES`).  Raw sockets and
pyzmq speak the same little protocol, in bytes, in :mod:`benchmarks.rawsock` and
:mod:`benchmarks.zmqsock`:

- a small ``{"op": "ping", ...}`` dict is echoed back (round trips);
- ``{"op": "data", "ack": bool, "payload": to_serialize(x)}`` is received and
  dropped; when ``ack`` is true the server answers ``{"op": "ack"}`` *after*
  it has read (and deserialized) the whole message, so a throughput number is
  the time until the receiver holds the data, not until the sender let go.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy

from distributed_comm.frames import nbytes

PING = {"op": "ping", "key": "x-7f3a9c", "nbytes": 1234, "worker": "tcp://127.0.0.1:40000"}
ACK = {"op": "ack"}
TIMEOUT = 300.0  # seconds any one measurement may take before it counts as a hang

# The same protocol for byte-level baselines (raw sockets, pyzmq): the first
# frame's first byte is the operation; no serialization at all.
PING_FRAME = b"p" * 64  # about the size of PING packed with msgpack
DATA, DATA_ACK, ACK_FRAME = b"d", b"a", b"k"

# implementation name -> (comm module, protocol module)
COMM_MODULES = {
    "ours": ("distributed_comm", "distributed_comm.protocol"),
    "distributed": ("distributed.comm", "distributed.protocol"),
}


def make_payload(kind: str, size: int) -> Any:
    """*size* bytes of non-zero data (so every page is really resident)."""
    data = numpy.ones(size, dtype="u1")
    return data.tobytes() if kind == "bytes" else data


#: The fewest messages a reported burst carries: one large message alone is at
#: the mercy of a page-fault storm in the receiver's fresh buffer (seen here as
#: 4x swings at 128 MiB, raw sockets included).
MIN_MESSAGES = 3


def next_burst(count: int, elapsed: float, seconds: float) -> int | None:
    """How many messages the next burst sends, or ``None`` when this burst is the result.

    A burst is timed from its first write until the server acknowledges its
    last message, so writes that return before the data left (pyzmq queues,
    buffered streams) cannot inflate the number.  A burst of at least
    :data:`MIN_MESSAGES` that filled at least half the time box is reported;
    otherwise the next one is sized from this one's pace to fill the box
    (``seconds <= 0``: one message, reported).
    """
    if seconds <= 0:
        return None
    if elapsed >= seconds / 2:
        return None if count >= MIN_MESSAGES else MIN_MESSAGES
    return max(count + 1, min(count * 100, math.ceil(count * seconds / max(elapsed, 1e-9))))


def connect_rate(open_and_greet: Callable[[], Callable[[], None]], seconds: float) -> float:
    """Connections/s of a blocking baseline: ``open_and_greet()`` connects and
    exchanges one small message (standing in for the comm handshake), then
    returns the function that closes it; closing is not timed."""
    spent, count = 0.0, 0
    while spent < seconds:
        start = time.perf_counter()
        close = open_and_greet()
        spent += time.perf_counter() - start
        count += 1
        close()
    return count / spent


def burst_throughput(burst: Callable[[int], float], size: int, seconds: float) -> float:
    """Bytes/s of the first burst long enough to report; ``burst(n)`` sends *n*, returns seconds."""
    count = 1
    while True:
        elapsed = burst(count)
        following = next_burst(count, elapsed, seconds)
        if following is None:
            return count * size / elapsed
        count = following


class Client(Protocol):
    """What the runner measures; every implementation provides these (blocking calls)."""

    def roundtrip(self, seconds: float) -> float:
        """Small-message round trips per second on one connection."""

    def concurrent(self, comms: int, seconds: float) -> float:
        """Round trips per second summed over *comms* connections used at once."""

    def connect(self, seconds: float) -> float:
        """New connections per second (connect until usable, handshake included)."""

    def throughput(self, payload: Any, seconds: float) -> float:
        """Payload bytes per second until the receiver has read them all."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class CommAPI:
    """The parts of a comm module the workloads use."""

    comm: ModuleType
    to_serialize: Any

    @classmethod
    def load(cls, implementation: str) -> CommAPI:
        comm_name, protocol_name = COMM_MODULES[implementation]
        comm = importlib.import_module(comm_name)
        return cls(comm, importlib.import_module(protocol_name).to_serialize)

    def has_transport(self, scheme: str) -> bool:
        return scheme in self.comm.backends


def serve(api: CommAPI):
    """The server's comm handler: echo pings, acknowledge marked data messages."""

    async def handle(comm) -> None:
        try:
            while True:
                msg = await comm.read()
                if msg["op"] == "ping":
                    await comm.write(msg)
                elif msg["ack"]:
                    await comm.write(ACK)
                del msg  # dropped before the next read, as the baselines drop theirs
        except api.comm.CommClosedError:
            pass

    return handle


async def start_listener(api: CommAPI, address: str, connection_args: dict):
    listener = api.comm.listen(address, serve(api), **connection_args)
    await listener.start()
    return listener


class CommClient:
    """A :class:`Client` over a comm module; drives *loop* for each measurement."""

    def __init__(
        self, api: CommAPI, loop: asyncio.AbstractEventLoop, address: str, connection_args: dict
    ):
        self._api = api
        self._loop = loop
        self._address = address
        self._connection_args = connection_args
        self._comm = self._run(self._connect())
        self._crowd: list = []

    def _run(self, coroutine):
        return self._loop.run_until_complete(asyncio.wait_for(coroutine, TIMEOUT))

    async def _connect(self):
        return await self._api.comm.connect(self._address, **self._connection_args)

    def roundtrip(self, seconds: float) -> float:
        return self._run(_roundtrips([self._comm], seconds))

    def concurrent(self, comms: int, seconds: float) -> float:
        missing = comms - len(self._crowd)
        if missing > 0:  # set up once, untimed
            self._crowd += self._run(asyncio.gather(*(self._connect() for _ in range(missing))))
        return self._run(_roundtrips(self._crowd[:comms], seconds))

    def connect(self, seconds: float) -> float:
        return self._run(self._connect_rate(seconds))

    async def _connect_rate(self, seconds: float) -> float:
        spent, count = 0.0, 0
        while spent < seconds:
            start = time.perf_counter()
            comm = await self._connect()
            spent += time.perf_counter() - start
            count += 1
            await comm.close()
        return count / spent

    def throughput(self, payload: Any, seconds: float) -> float:
        return burst_throughput(
            lambda count: self._run(self._burst(payload, count)), nbytes(payload), seconds
        )

    async def _burst(self, payload: Any, count: int) -> float:
        comm, to_serialize = self._comm, self._api.to_serialize
        start = time.perf_counter()
        for i in range(1, count + 1):
            await comm.write({"op": "data", "ack": i == count, "payload": to_serialize(payload)})
        reply = await comm.read()
        elapsed = time.perf_counter() - start
        if reply != ACK:
            raise RuntimeError(f"expected {ACK} from the server, got {reply!r}")
        return elapsed

    def close(self) -> None:
        for comm in [self._comm, *self._crowd]:
            self._run(comm.close())


async def _roundtrips(comms: list, seconds: float) -> float:
    """Ping-pong on every comm at once until the time box ends; total round trips/s."""
    start = time.perf_counter()
    deadline = start + seconds

    async def ping_pong(comm) -> int:
        count = 0
        while True:
            await comm.write(PING)
            await comm.read()
            count += 1
            if time.perf_counter() >= deadline:
                return count

    counts = await asyncio.gather(*(ping_pong(comm) for comm in comms))
    return sum(counts) / (time.perf_counter() - start)
