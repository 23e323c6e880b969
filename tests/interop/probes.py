"""Functions the tests send to cluster processes to see which comm classes they use.

Importable by reference in every process the tests start (``PYTHONPATH`` holds ``tests/``).
"""

from __future__ import annotations


def scheduler_comm_modules(dask_scheduler) -> list[str]:
    """Modules of the scheduler's comms to its workers and clients."""
    comms = [batched.comm for batched in dask_scheduler.stream_comms.values()]
    comms += [batched.comm for batched in dask_scheduler.client_comms.values()]
    return sorted({type(comm).__module__ for comm in comms})


def worker_comm_module(dask_worker) -> str:
    """Module of the worker's comm to the scheduler."""
    return type(dask_worker.batched_stream.comm).__module__
