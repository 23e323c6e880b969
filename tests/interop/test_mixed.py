"""Separate processes, some on our transport and some stock, in one dask cluster.

``install()`` swaps our transport in behind ``tcp://`` in a process; its peers
cannot tell. The client is always this (stock) test process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from distributed import Client

from .probes import scheduler_comm_modules, worker_comm_module

TESTS = Path(__file__).resolve().parent.parent
OURS, STOCK = "distributed_comm.interop", "distributed.comm.tcp"
START_TIMEOUT = 60


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


@contextlib.contextmanager
def started(*argv: str, stop_on_eof: bool = True):
    """A process running ``argv``, stopped on exit: by closing its stdin when it
    serves until EOF (``interop.serve``), by SIGTERM otherwise; killed if that fails."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        yield proc
    finally:
        proc.stdin.close()
        if not stop_on_eof:
            proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server(*args: str):
    return started(sys.executable, "-m", "interop.serve", *args)


def address_of(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline().strip()
    assert "://" in line, f"server printed {line!r} (exit code {proc.poll()})"
    return line


def _move_between_workers(client: Client, first: str, second: str) -> None:
    """Data made on each worker is used on the other: both directions of a transfer."""
    array = np.arange(2_000_000, dtype="i8")
    [on_first] = client.scatter([array], workers=[first])
    made_on_second = client.submit(np.ones, 1_000_000, workers=[second], pure=False)
    total = client.submit(lambda a: int(a.sum()), on_first, workers=[second], pure=False)
    ones = client.submit(lambda a: int(a.sum()), made_on_second, workers=[first], pure=False)
    assert total.result() == int(array.sum())
    assert ones.result() == 1_000_000


def _compute(client: Client) -> None:
    x = da.arange(100_000, chunks=1_000)
    assert client.compute(x.sum(), sync=True) == int(np.arange(100_000).sum())
    assert client.submit(lambda v: v + 1, 41).result() == 42


def test_our_scheduler_and_workers_serve_a_stock_client():
    with server("--install", "scheduler") as scheduler:
        address = address_of(scheduler)
        with (
            server("--install", "worker", address) as a,
            server("--install", "worker", address) as b,
        ):
            workers = sorted([address_of(a), address_of(b)])
            with Client(address, timeout=START_TIMEOUT) as client:
                client.wait_for_workers(2, timeout=START_TIMEOUT)
                assert type(client.scheduler_comm.comm).__module__ == STOCK
                assert client.run_on_scheduler(scheduler_comm_modules) == [OURS]
                assert set(client.run(worker_comm_module).values()) == {OURS}
                _compute(client)
                _move_between_workers(client, *workers)


def test_stock_scheduler_serves_our_worker_next_to_a_stock_one():
    with server("scheduler") as scheduler:
        address = address_of(scheduler)
        with server("--install", "worker", address) as ours, server("worker", address) as stock:
            our_worker, stock_worker = address_of(ours), address_of(stock)
            with Client(address, timeout=START_TIMEOUT) as client:
                client.wait_for_workers(2, timeout=START_TIMEOUT)
                assert client.run_on_scheduler(scheduler_comm_modules) == [STOCK]
                assert client.run(worker_comm_module) == {our_worker: OURS, stock_worker: STOCK}
                _compute(client)
                _move_between_workers(client, our_worker, stock_worker)


def test_dask_cli_on_dc_tcp(tmp_path):
    """``dask scheduler --protocol dc+tcp`` and ``dask worker``: nothing but the entry points."""
    scheduler_file = tmp_path / "scheduler.json"
    dask_cli = (sys.executable, "-m", "dask")
    with started(
        *dask_cli,
        "scheduler",
        "--protocol=dc+tcp",
        "--host=127.0.0.1",
        "--port=0",
        "--no-dashboard",
        f"--scheduler-file={scheduler_file}",
        stop_on_eof=False,
    ):
        deadline = time.monotonic() + START_TIMEOUT
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with started(
            *dask_cli,
            "worker",
            f"--scheduler-file={scheduler_file}",
            "--host=127.0.0.1",
            "--no-nanny",
            "--nthreads=1",
            "--no-dashboard",
            stop_on_eof=False,
        ):
            with Client(scheduler_file=str(scheduler_file), timeout=START_TIMEOUT) as client:
                assert client.scheduler.address.startswith("dc+tcp://127.0.0.1:")
                client.wait_for_workers(1, timeout=START_TIMEOUT)
                assert type(client.scheduler_comm.comm).__module__ == OURS
                (module,) = client.run(worker_comm_module).values()
                assert module == OURS
                _compute(client)


@pytest.fixture(autouse=True, scope="module")
def _no_install_in_this_process():
    """The client must be stock: nothing in this process may have called install()."""
    from distributed.comm import registry

    assert type(registry.get_backend("tcp")).__module__ == STOCK
