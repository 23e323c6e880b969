"""dumps + loads: distributed_comm.protocol vs distributed.protocol, side by side.

Each case encodes a message and decodes the frames, many times per run; the
table shows the median time per dumps+loads over several runs and the ratio
ours/distributed (below 1 means ours is faster).  Both get the context a comm
passes after the handshake (no compression, pickle protocol 5).

    PYTHONPATH=. python benchmarks/bench_protocol.py [--runs 7] [--json out.json]
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

import distributed_comm.protocol as ours

CONTEXT = {"compression": None, "pickle-protocol": 5, "sender": {}, "recipient": {}}
MiB = 2**20


def small_dict(protocol) -> object:
    return {"op": "task-finished", "key": "x-1", "status": "OK", "nbytes": 800, "thread": 1}


def array_64mb(protocol) -> object:
    data = np.random.default_rng(0).random(64 * MiB // 8)
    return {"op": "get-data", "data": protocol.to_serialize(data)}


CASES: dict[str, tuple[Callable[[object], object], int]] = {
    "small dict": (small_dict, 20_000),
    "64 MiB float64 array": (array_64mb, 200),
}


def seconds_per_op(protocol, msg: object, repeat: int) -> float:
    dumps, loads = protocol.dumps, protocol.loads
    start = time.perf_counter()
    for _ in range(repeat):
        loads(dumps(msg, context=CONTEXT))
    return (time.perf_counter() - start) / repeat


def measure(runs: int) -> dict[str, dict[str, list[float]]]:
    import distributed.protocol as theirs

    results: dict[str, dict[str, list[float]]] = {}
    for name, (make, repeat) in CASES.items():
        sides = {"ours": (ours, make(ours)), "distributed": (theirs, make(theirs))}
        times: dict[str, list[float]] = {side: [] for side in sides}
        for protocol, msg in sides.values():
            seconds_per_op(protocol, msg, max(1, repeat // 10))  # warm up
        for _ in range(runs):  # alternate sides so drift affects both alike
            for side, (protocol, msg) in sides.items():
                times[side].append(seconds_per_op(protocol, msg, repeat))
        results[name] = times
    return results


def table(results: dict[str, dict[str, list[float]]]) -> str:
    rows = [f"{'case':<24} {'ours':>12} {'distributed':>12} {'ours/dist':>10}"]
    for name, times in results.items():
        mine = statistics.median(times["ours"])
        theirs = statistics.median(times["distributed"])
        rows.append(
            f"{name:<24} {mine * 1e6:>10.2f}us {theirs * 1e6:>10.2f}us {mine / theirs:>10.2f}"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write every run's timings here")
    args = parser.parse_args()
    results = measure(args.runs)
    print(f"median seconds per dumps+loads over {args.runs} runs ({platform.python_version()})")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "seconds": results}, indent=2))


if __name__ == "__main__":
    main()
