"""Run one stock distributed Scheduler or Worker, optionally on our transport.

    python -m interop.serve [--install] scheduler
    python -m interop.serve [--install] worker SCHEDULER_ADDRESS

Prints the server's address, then serves until its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


async def serve(role: str, scheduler_address: str | None) -> None:
    from distributed import Scheduler, Worker

    if role == "scheduler":
        server = Scheduler(host="127.0.0.1", port=0, dashboard=False)
    else:
        server = Worker(scheduler_address, host="127.0.0.1", nthreads=1)
    async with server:
        print(server.address, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--install", action="store_true", help="serve tcp:// with distributed_comm")
    parser.add_argument("role", choices=["scheduler", "worker"])
    parser.add_argument("scheduler_address", nargs="?")
    args = parser.parse_args()
    if args.install:
        from distributed_comm.interop import install

        install()
    asyncio.run(serve(args.role, args.scheduler_address))


if __name__ == "__main__":
    main()
