"""Our default comm (our own protocol, no distributed code) against stock distributed servers.

Both directions: our ``connect`` asks a stock Scheduler for its identity and
cores, and a stock ``distributed.core.rpc`` calls handlers behind our ``listen``.
"""

from __future__ import annotations

import asyncio
import pickle

import numpy as np
import pytest
from distributed import Scheduler, Worker
from distributed.comm import registry as stock_registry
from distributed.core import rpc
from distributed.protocol import to_serialize as stock_to_serialize

import distributed_comm
from distributed_comm import tcp
from distributed_comm.protocol import to_serialize

#: The parts of a Scheduler's identity that do not change from one call to the next.
STABLE_IDENTITY = ("type", "id", "address", "services", "started", "n_workers", "total_threads")


@pytest.fixture(autouse=True)
def _stock_tcp_in_this_process():
    """These tests need distributed's own tcp on the other end (no install() leaking in)."""
    assert type(stock_registry.get_backend("tcp")).__module__ == "distributed.comm.tcp"


async def ask(comm: distributed_comm.Comm, op: str, **args):
    await comm.write({"op": op, "reply": True, **args})
    return await asyncio.wait_for(comm.read(), 10)


async def test_our_comm_queries_a_stock_scheduler():
    async with (
        Scheduler(host="127.0.0.1", port=0, dashboard=False) as scheduler,
        Worker(scheduler.address, nthreads=3, host="127.0.0.1") as worker,
    ):
        comm = await distributed_comm.connect(scheduler.address, timeout=5)
        try:
            assert type(comm) is tcp.TCP  # our own protocol, not distributed's
            identity = await ask(comm, "identity")
            ncores = await ask(comm, "ncores")
            only = await ask(comm, "ncores", workers=[worker.address])
            missing = await ask(comm, "ncores", workers=["tcp://127.0.0.1:1"])
        finally:
            await comm.close()
        async with rpc(scheduler.address) as stock:
            expected = await stock.identity()
            expected_ncores = await stock.ncores()

    assert identity["type"] == "Scheduler"
    assert identity["id"] == scheduler.id
    assert identity["address"] == scheduler.address
    assert {k: identity[k] for k in STABLE_IDENTITY} == {k: expected[k] for k in STABLE_IDENTITY}
    assert list(identity["workers"]) == [worker.address]
    assert identity["workers"][worker.address]["nthreads"] == 3
    assert ncores == expected_ncores == {worker.address: 3}
    assert only == {worker.address: 3}
    assert missing == {}


async def test_stock_scheduler_reports_a_failing_handler_to_our_comm():
    async with Scheduler(host="127.0.0.1", port=0, dashboard=False) as scheduler:
        comm = await distributed_comm.connect(scheduler.address, timeout=5)
        try:
            reply = await ask(comm, "identity", bogus=1)
            # the comm stays usable after an error reply
            assert (await ask(comm, "identity"))["id"] == scheduler.id
        finally:
            await comm.close()
    assert reply["status"] == "uncaught-error"
    assert "bogus" in reply["exception_text"]
    exception = pickle.loads(reply["exception"])
    assert isinstance(exception, TypeError) and "bogus" in str(exception)


def _answer_like_a_server(handlers: dict):
    """A comm handler that dispatches ``{"op": ..., "reply": ...}`` as a distributed Server does."""

    async def serve(comm: distributed_comm.Comm) -> None:
        while True:
            try:
                msg = await comm.read()
            except distributed_comm.CommClosedError:
                return
            op = msg.pop("op")
            reply = msg.pop("reply", True)
            if op == "close":
                await comm.close()
                return
            result = handlers[op](**msg)
            if reply:
                await comm.write(result)

    return serve


async def test_stock_rpc_calls_our_listener():
    calls = []
    handlers = {
        "identity": lambda: {"type": "Ours", "id": "listener-1"},
        "add": lambda x, y: x + y,
        "echo": lambda data: to_serialize(data),
        "shape": lambda data: tuple(data.shape),
        "note": lambda text: calls.append(text),
    }
    array = np.random.default_rng(2).random((300, 200))
    async with distributed_comm.listen("tcp://127.0.0.1:0", _answer_like_a_server(handlers)) as ln:
        async with rpc(ln.contact_address) as remote:
            identity = await remote.identity()
            total = await remote.add(x=2, y=40)
            echoed = await remote.echo(data=stock_to_serialize(array))
            shape = await remote.shape(data=stock_to_serialize(array))
            await remote.note(text="no reply wanted", reply=False)
            # The same comm is still in step after a reply-less call.
            assert await remote.add(x=1, y=1) == 2

    assert identity == {"type": "Ours", "id": "listener-1"}
    assert total == 42
    assert isinstance(echoed, np.ndarray)
    np.testing.assert_array_equal(echoed, array)
    assert shape == (300, 200)
    assert calls == ["no reply wanted"]
