"""The server side, in its own process (spawned), one per implementation.

The parent talks to a peer over a pipe: the peer starts its listeners and
reports their addresses (or why one failed), then answers memory requests
(reset / read its peak RSS) until told to stop or the parent goes away.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from multiprocessing.connection import Connection

from benchmarks import tlscerts
from benchmarks.impls import IMPLEMENTATIONS
from benchmarks.memory import PeakMeter

_START_TIMEOUT = 60.0


class Peer:
    """Handle on one peer process serving *implementation* on several transports."""

    def __init__(self, implementation: str, addresses: dict[str, str], tls: tlscerts.TLSFiles):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_main,
            args=(child, implementation, addresses, tls),
            name=f"benchmark-peer-{implementation}",
            daemon=True,
        )
        self._process.start()
        child.close()

    def started(self) -> tuple[dict[str, str], dict[str, str]]:
        """``({transport: contact address}, {transport: why it failed})``."""
        if not self._conn.poll(_START_TIMEOUT):
            raise RuntimeError(f"{self._process.name} did not start within {_START_TIMEOUT} s")
        return self._conn.recv()

    def reset_peak(self) -> None:
        self._conn.send("reset")
        self._conn.recv()

    def peak(self) -> tuple[int, int]:
        """The peer's ``(peak RSS, growth)`` since the last reset, in bytes."""
        self._conn.send("peak")
        return self._conn.recv()

    def stop(self) -> None:
        try:
            self._conn.send("stop")
        except OSError:
            pass
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._conn.close()


def _main(
    conn: Connection, implementation: str, addresses: dict[str, str], tls: tlscerts.TLSFiles
) -> None:
    impl = IMPLEMENTATIONS[implementation]
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="peer-loop", daemon=True).start()
    served, failed = {}, {}
    for transport, address in addresses.items():
        try:
            served[transport] = impl.serve(transport, address, tls, loop)
        except Exception as exc:
            failed[transport] = f"server failed to start: {type(exc).__name__}: {exc}"
    conn.send((served, failed))
    meter = PeakMeter()
    while True:
        try:
            command = conn.recv()
        except EOFError:  # the parent is gone
            return
        if command == "reset":
            meter.reset()
            conn.send(None)
        elif command == "peak":
            conn.send(meter.read())
        else:
            return
