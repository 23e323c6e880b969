"""``python -m benchmarks``: options, then run, print the table, write files."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

from benchmarks import environment, report
from benchmarks.plan import FULL_SIZES, QUICK_SIZES, TRANSPORTS, Plan, format_size
from benchmarks.runner import run
from distributed_comm.config import parse_bytes

_QUICK = Plan(sizes=QUICK_SIZES, repeat=1, seconds=0.02, concurrency=10)
_FULL = Plan(sizes=FULL_SIZES, repeat=3, seconds=0.1, opt_in=True)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({parse_bytes(part) for part in _csv(value)}))
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"--sizes {value!r}: {exc}") from None
    if not sizes or sizes[0] <= 0:
        raise argparse.ArgumentTypeError(f"--sizes {value!r}: give positive sizes like 1KiB,1MiB")
    return sizes


def _positive(kind):
    def parse(value: str):
        number = kind(value)
        if number <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
        return number

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Throughput and latency of distributed_comm's transports on loopback, "
        "side by side with distributed.comm, raw sockets and pyzmq.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="smoke run (< 30 s): 1 KiB and 1 MiB, 1 run"
    )
    mode.add_argument(
        "--full",
        action="store_true",
        help="adds 1 GiB and ws/wss; 100 ms time boxes (about 10 minutes)",
    )
    p.add_argument(
        "--only", type=_csv, metavar="T1,T2", help=f"transports to run, of {', '.join(TRANSPORTS)}"
    )
    p.add_argument(
        "--sizes", type=_sizes, metavar="S1,S2", help="payload sizes, e.g. 1KiB,1MiB,128MiB"
    )
    p.add_argument(
        "--repeat", type=_positive(int), metavar="N", help="repetitions (medians are reported)"
    )
    p.add_argument(
        "--seconds", type=_positive(float), metavar="S", help="time box of each measurement"
    )
    p.add_argument("--json", metavar="PATH", help="write all samples and medians as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of throughput vs payload size")
    return p


def make_plan(args: argparse.Namespace) -> Plan:
    base = _QUICK if args.quick else _FULL if args.full else Plan()
    return Plan(
        sizes=args.sizes or base.sizes,
        repeat=args.repeat or base.repeat,
        seconds=args.seconds or base.seconds,
        concurrency=base.concurrency,
        transports=args.only,
        opt_in=base.opt_in,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print('error: --plot needs matplotlib: pip install -e ".[bench]"', file=sys.stderr)
        return 2
    plan = make_plan(args)
    sizes = ", ".join(format_size(size) for size in plan.sizes)
    print(f"Benchmarking on loopback: payloads {sizes}; {plan.repeat} run(s) ...", file=sys.stderr)
    started = time.monotonic()
    try:
        result = run(plan)
    except ValueError as exc:  # bad --only
        print(f"error: {exc}", file=sys.stderr)
        return 2
    env = environment.describe()
    print(report.table(result))
    print(f"\n({time.monotonic() - started:.0f} s; {env['cpu']}, {env['cpus']} CPUs)")
    if args.json:
        report.write_json(result, env, args.json)
    if args.plot:
        from benchmarks import plot

        plot.write_png(result, env, args.plot)
    return 0 if result.targets else 1
