"""Unmodified dask code on a LocalCluster whose processes talk over our transport.

The same workloads run on distributed's own ``tcp://`` (the oracle) and on
``dc+tcp://`` / ``dc+tls://``; every result is also checked against a local
computation, so stock and ours must agree with each other and with numpy.
"""

from __future__ import annotations

import functools
import operator
from functools import reduce

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

from .probes import scheduler_comm_modules, worker_comm_module

PROTOCOLS = ["tcp", "dc+tcp", "dc+tls"]
#: The module whose comm classes each protocol must use, end to end.
COMM_MODULE = {
    "tcp": "distributed.comm.tcp",
    "dc+tcp": "distributed_comm.interop",
    "dc+tls": "distributed_comm.interop",
}


@pytest.fixture(scope="module", params=PROTOCOLS)
def cluster(request, security):
    protocol = request.param
    tls = protocol.endswith("tls")
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            protocol=f"{protocol}://",
            security=security if tls else None,
            dashboard_address=None,
            worker_dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2)
        yield protocol, client


def test_every_process_uses_the_chosen_transport(cluster):
    protocol, client = cluster
    expected = COMM_MODULE[protocol]
    assert client.scheduler.address.startswith(f"{protocol}://127.0.0.1:")
    assert type(client.scheduler_comm.comm).__module__ == expected
    assert client.run_on_scheduler(scheduler_comm_modules) == [expected]
    per_worker = client.run(worker_comm_module)
    assert len(per_worker) == 2
    assert set(per_worker.values()) == {expected}
    assert all(address.startswith(f"{protocol}://") for address in per_worker)


def _random_array() -> da.Array:
    return da.random.RandomState(42).random((1000, 1000), chunks=(100, 100))


@functools.cache
def _local_reduction() -> tuple:
    x = _random_array()
    return dask.compute(x.sum(), x.mean(axis=0), scheduler="sync")


def test_array_reduction_over_100_chunks(cluster):
    _, client = cluster
    x = _random_array()
    assert x.npartitions == 100
    total, column_means = client.compute([x.sum(), x.mean(axis=0)], sync=True)
    local_total, local_means = _local_reduction()
    assert total == local_total
    np.testing.assert_array_equal(column_means, local_means)


def _strided_sum(array: np.ndarray, offset: int) -> int:
    return int(array[offset::8].sum())


def test_scatter_50mb_and_map_over_it(cluster):
    _, client = cluster
    first, second = sorted(client.ncores())
    # Integers: float sums may differ in the last bit with the buffer's alignment.
    array = np.random.default_rng(1).integers(0, 2**40, 50 * 10**6 // 8)
    [future] = client.scatter([array], workers=[first])
    # Mapping on the other worker moves the 50 MB between the two workers.
    mapped = client.map(_strided_sum, [future] * 8, range(8), workers=[second], pure=False)
    sums = client.gather(mapped)
    assert sums == [_strided_sum(array, offset) for offset in range(8)]
    # They ran where the array was not: it crossed from one worker to the other.
    assert {tuple(holders) for holders in client.who_has(mapped).values()} == {(second,)}
    back = future.result()
    assert back.flags.writeable
    np.testing.assert_array_equal(back, array)


def test_submit_lambda(cluster):
    _, client = cluster
    offset = 17
    assert client.submit(lambda x: x * 2 + offset, 20).result() == 57
    assert client.submit(lambda: np.arange(3)).result().tolist() == [0, 1, 2]


def test_graph_where_each_task_depends_on_many(cluster):
    _, client = cluster
    width = 40
    layer = client.map(lambda i: i * i, range(width))
    for depth in range(3):
        layer = [
            client.submit(lambda *parents, d=depth, k=k: sum(parents) % 1_000_003 + d * k, *layer)
            for k in range(width)
        ]
    results = client.gather(layer)

    expected = [i * i for i in range(width)]
    for depth in range(3):
        expected = [sum(expected) % 1_000_003 + depth * k for k in range(width)]
    assert results == expected
    assert reduce(operator.add, results) == sum(expected)
