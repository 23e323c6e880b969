"""What one run measures: transports, payload sizes, repetitions, time boxes.

Adding a transport is one line in :data:`TRANSPORTS`; an implementation that
has no backend for it is skipped with a reason, never faked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

MiB = 2**20

# scheme -> listen address; "{dir}" is a private temporary directory, "{impl}"
# the implementation's name (so socket files never collide).
TRANSPORTS: dict[str, str] = {
    "inproc": "inproc://",
    "tcp": "tcp://127.0.0.1:0",
    "tls": "tls://127.0.0.1:0",
    "unix": "unix://{dir}/{impl}.sock",
    "ws": "ws://127.0.0.1:0",
    "wss": "wss://127.0.0.1:0",
}
OPT_IN = frozenset({"ws", "wss"})  # slow to run; only with --only or --full
SECURE = frozenset({"tls", "wss"})  # need certificates (ssl_context=...)
IN_PROCESS = frozenset({"inproc"})  # both ends live here; no peer process
KINDS = ("bytes", "numpy")

DEFAULT_SIZES = (2**10, 2**16, 2**20, 2**24, 2**27)  # 1 KiB .. 128 MiB
FULL_SIZES = (*DEFAULT_SIZES, 2**30)  # + 1 GiB
QUICK_SIZES = (2**10, 2**20)


@dataclass(frozen=True)
class Point:
    """One measurement, made once per target per repetition."""

    workload: str  # roundtrip | concurrent | connect | throughput | rss
    kind: str | None = None  # bytes | numpy, for payload workloads
    size: int | None = None  # payload bytes, for payload workloads

    @property
    def label(self) -> str:
        if self.size is None:
            return self.workload
        return f"{self.workload} {self.kind} {format_size(self.size)}"


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    repeat: int = 3
    seconds: float = 0.06  # time box of each timed measurement
    concurrency: int = 100  # comms in the "concurrent" workload
    transports: tuple[str, ...] | None = None  # None: every transport ours has...
    opt_in: bool = False  # ...including those in OPT_IN
    kinds: tuple[str, ...] = field(default=KINDS)

    def points(self) -> Iterator[Point]:
        yield Point("roundtrip")
        yield Point("concurrent")
        yield Point("connect")
        for kind in self.kinds:
            for size in self.sizes:
                yield Point("throughput", kind, size)
        for kind in self.kinds:
            yield Point("rss", kind, max(self.sizes))


def format_size(n: int) -> str:
    """``1048576`` -> ``"1 MiB"`` (whole binary units where possible)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            value = n / scale
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"
