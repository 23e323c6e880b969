"""Small-message round trips per second: our inproc vs distributed.comm's, and our tcp.

A client writes ``{"op": "ping", "i": i}``, an echo handler writes it back, the
client reads it: one round trip.  Each case runs several times; the table shows
the median rate and the JSON file keeps every run.

    PYTHONPATH=. python benchmarks/bench_inproc.py [--runs 5] [--seconds 0.5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import distributed_comm


def echo_handler(comm_module) -> Callable[[object], Awaitable[None]]:
    async def echo(comm) -> None:
        try:
            while True:
                await comm.write(await comm.read())
        except comm_module.CommClosedError:
            pass

    return echo


async def round_trips(comm, seconds: float) -> float:
    """Round trips per second over about *seconds*, measured in batches."""
    count, batch = 0, 200
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for i in range(batch):
            await comm.write({"op": "ping", "i": i})
            await comm.read()
        count += batch
    return count / elapsed


async def run_case(comm_module, address: str, seconds: float, runs: int, listen_loop=None):
    """Rates of *runs* runs against an echo listener (on *listen_loop* if given)."""

    async def start_listener():
        return await comm_module.listen(address, echo_handler(comm_module))

    if listen_loop is None:
        listener = await start_listener()
    else:
        future = asyncio.run_coroutine_threadsafe(start_listener(), listen_loop)
        listener = await asyncio.wrap_future(future)
    comm = await comm_module.connect(listener.contact_address)
    await round_trips(comm, seconds / 5)  # warm up
    rates = [await round_trips(comm, seconds) for _ in range(runs)]
    await comm.close()
    if listen_loop is None:
        listener.stop()
    else:
        listen_loop.call_soon_threadsafe(listener.stop)
    return rates


def loop_in_thread() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    return loop


async def main(runs: int, seconds: float) -> dict[str, list[float]]:
    import distributed.comm as theirs

    other = loop_in_thread()
    cases = {
        "distributed_comm inproc (same loop)": (distributed_comm, "inproc://", None),
        "distributed.comm inproc (same loop)": (theirs, "inproc://", None),
        "distributed_comm inproc (cross-thread)": (distributed_comm, "inproc://", other),
        "distributed.comm inproc (cross-thread)": (theirs, "inproc://", other),
        "distributed_comm tcp (same loop)": (distributed_comm, "tcp://127.0.0.1:0", None),
        "distributed.comm tcp (same loop)": (theirs, "tcp://127.0.0.1:0", None),
    }
    results = {}
    for name, (module, address, loop) in cases.items():
        results[name] = await run_case(module, address, seconds, runs, loop)
    other.call_soon_threadsafe(other.stop)
    return results


def report(results: dict[str, list[float]]) -> dict[str, float]:
    medians = {name: statistics.median(rates) for name, rates in results.items()}
    ours_tcp = medians["distributed_comm tcp (same loop)"]
    width = max(map(len, medians))
    print(f"{'case':<{width}}  {'round trips/s':>14}  {'vs our tcp':>10}")
    for name, rate in medians.items():
        print(f"{name:<{width}}  {rate:>14,.0f}  {rate / ours_tcp:>9.1f}x")
    return medians


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one run")
    parser.add_argument("--json", type=Path, default=Path("bench-results/bench_inproc.json"))
    args = parser.parse_args()
    results = asyncio.run(main(args.runs, args.seconds))
    medians = report(results)
    ratio = (
        medians["distributed_comm inproc (same loop)"] / medians["distributed_comm tcp (same loop)"]
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "runs": results,
                "medians": medians,
                "inproc_over_our_tcp": ratio,
            },
            indent=2,
        )
    )
    print(f"our inproc / our tcp: {ratio:.1f}x (target >= 10x); wrote {args.json}")
