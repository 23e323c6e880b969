"""A real dask workload on distributed's ``tcp://`` vs our ``dc+tcp://``.

Two LocalClusters (2 worker processes, 1 thread each) stay up side by side
and take turns (interleaved, the order flipping every round), so drift in the
machine's load hits both alike. Per round and cluster:

- transfer: 200 MB of numpy arrays (20 x 10 MB) made on one worker is
  consumed on the other (direction alternating), so it crosses the wire once;
- tiny tasks: 5 000 independent no-op tasks, submitted and gathered
  (scheduler <-> worker message traffic, almost no payload).

The table shows the median wall time per workload and the ratio
dc+tcp / tcp (below 1: ours is faster).

    python benchmarks/bench_dask.py [--runs 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster, wait

PROTOCOLS = ("tcp", "dc+tcp")
PIECES, PIECE_BYTES = 20, 10 * 10**6
TINY_TASKS = 5_000


def _first_byte(array: np.ndarray) -> int:
    return int(array[0])


def _noop(i: int) -> int:
    return i


def transfer(client: Client, round_: int) -> float:
    """Seconds to move PIECES arrays from one worker to the other and use them there."""
    workers = sorted(client.ncores())
    source, target = workers if round_ % 2 else workers[::-1]
    arrays = client.map(
        np.full, [PIECE_BYTES] * PIECES, range(PIECES), dtype="u1", workers=[source], pure=False
    )
    wait(arrays)
    start = time.perf_counter()
    firsts = client.gather(client.map(_first_byte, arrays, workers=[target], pure=False))
    elapsed = time.perf_counter() - start
    assert firsts == [i % 256 for i in range(PIECES)]
    del arrays
    return elapsed


def tiny_tasks(client: Client, round_: int) -> float:
    """Seconds to run TINY_TASKS no-op tasks end to end."""
    start = time.perf_counter()
    results = client.gather(client.map(_noop, range(TINY_TASKS), pure=False))
    elapsed = time.perf_counter() - start
    assert results == list(range(TINY_TASKS))
    return elapsed


WORKLOADS: dict[str, Callable[[Client, int], float]] = {
    f"transfer {PIECES * PIECE_BYTES // 10**6} MB between 2 workers": transfer,
    f"{TINY_TASKS} tiny tasks": tiny_tasks,
}


def measure(runs: int) -> dict[str, dict[str, list[float]]]:
    times = {name: {protocol: [] for protocol in PROTOCOLS} for name in WORKLOADS}
    clusters = {
        protocol: LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            protocol=f"{protocol}://",
            dashboard_address=None,
            worker_dashboard_address=None,
        )
        for protocol in PROTOCOLS
    }
    clients = {protocol: Client(cluster) for protocol, cluster in clusters.items()}
    try:
        for client in clients.values():
            client.wait_for_workers(2)
            for workload in WORKLOADS.values():  # warm up: imports, connections
                workload(client, 0)
        for round_ in range(runs):
            order = PROTOCOLS if round_ % 2 == 0 else PROTOCOLS[::-1]
            for name, workload in WORKLOADS.items():
                for protocol in order:
                    times[name][protocol].append(workload(clients[protocol], round_))
    finally:
        for protocol in PROTOCOLS:
            clients[protocol].close()
            clusters[protocol].close()
    return times


def report(times: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    summary = {}
    print(f"{'workload':<36} {'tcp (s)':>9} {'dc+tcp (s)':>11} {'ratio':>7}")
    for name, by_protocol in times.items():
        stock, ours = (statistics.median(by_protocol[p]) for p in PROTOCOLS)
        summary[name] = {"tcp": stock, "dc+tcp": ours, "ratio": ours / stock}
        print(f"{name:<36} {stock:>9.3f} {ours:>11.3f} {ours / stock:>7.2f}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--json", type=Path, help="also write raw times and medians here")
    args = parser.parse_args()
    times = measure(args.runs)
    summary = report(times)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": platform.platform(),
                    "runs": args.runs,
                    "times": times,
                    "summary": summary,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
