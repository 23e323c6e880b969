"""Runs a :class:`~benchmarks.plan.Plan`: starts peers, connects clients, and
measures every point for every target, interleaved.

Each repetition walks the points in order and, for each point, visits the
targets in a fresh random order, so slow drift on the machine (thermal, other
processes) spreads over all implementations alike.  Medians are taken later.
A target that fails is dropped with its reason; the others carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from benchmarks import tlscerts
from benchmarks.impls import IMPLEMENTATIONS, Implementation
from benchmarks.memory import PeakMeter
from benchmarks.peers import Peer
from benchmarks.plan import IN_PROCESS, OPT_IN, TRANSPORTS, Plan, Point
from benchmarks.progress import Progress
from benchmarks.workloads import Client, make_payload

UNITS = {
    "roundtrip": "round trips/s",
    "concurrent": "round trips/s",
    "connect": "connects/s",
    "throughput": "bytes/s",
    "rss_sender": "bytes",
    "rss_receiver": "bytes",
}
_WARM_UP_SECONDS = 0.01


@dataclass
class Target:
    impl: Implementation
    transport: str
    client: Client
    peer: Peer | None  # None: the server lives in this process (inproc)

    @property
    def key(self) -> tuple[str, str]:
        return self.impl.name, self.transport


@dataclass
class Result:
    workload: str
    implementation: str
    transport: str
    kind: str | None
    size: int | None
    samples: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)  # absolute peak RSS (rss_* only)

    @property
    def unit(self) -> str:
        return UNITS[self.workload]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclass
class Run:
    plan: Plan
    transports: list[str]
    targets: list[tuple[str, str]]  # (implementation, transport) that ran
    results: dict[tuple, Result] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def record(self, workload: str, target: Target, point: Point, value: float, peak=None):
        key = (workload, *target.key, point.kind, point.size)
        result = self.results.setdefault(key, Result(workload, *target.key, point.kind, point.size))
        result.samples.append(value)
        if peak is not None:
            result.peaks.append(peak)

    def skip(self, implementation: str, transport: str, reason: str) -> None:
        self.skipped.append(
            {"implementation": implementation, "transport": transport, "reason": reason}
        )


def choose_transports(plan: Plan) -> list[str]:
    """``--only`` as given, else every transport ours has a backend for (opt-in ones if asked)."""
    if plan.transports is not None:
        unknown = sorted(set(plan.transports) - set(TRANSPORTS))
        if unknown:
            raise ValueError(f"unknown transport(s) {unknown}; known: {sorted(TRANSPORTS)}")
        return list(plan.transports)
    ours = IMPLEMENTATIONS["ours"]
    return [t for t in TRANSPORTS if ours.supports(t) and (plan.opt_in or t not in OPT_IN)]


def run(plan: Plan, progress_stream: TextIO = sys.stderr) -> Run:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    transports = choose_transports(plan)
    run = Run(plan, transports, [])
    peers: list[Peer] = []
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="dc-bench-") as tmp:
        try:
            tls = tlscerts.make(Path(tmp))
            targets = _start(run, tls, tmp, loop, peers)
            targets = _warm_up(run, targets)
            run.targets = [target.key for target in targets]
            _measure(run, targets, Progress(_steps(plan, targets), progress_stream))
        finally:
            for target in targets:
                with contextlib.suppress(Exception):  # a failed target was reported already
                    target.client.close()
            for peer in peers:
                peer.stop()
            for impl in IMPLEMENTATIONS.values():
                impl.stop_servers(loop)
            _close_loop(loop)
    return run


def _start(run: Run, tls, tmp: str, loop, peers: list[Peer]) -> list[Target]:
    """Servers (peers started in parallel), then one connected client per target."""
    servers: list[tuple[Implementation, str, str, Peer | None]] = []
    pending: list[tuple[Implementation, Peer]] = []
    for impl in IMPLEMENTATIONS.values():
        missing = impl.missing()
        if missing:
            run.skip(impl.name, "*", missing)
            continue
        remote = {}
        for transport in run.transports:
            if not impl.supports(transport):
                if impl.is_comm_module:  # baselines only exist for some transports
                    run.skip(impl.name, transport, f"no {transport} backend")
                continue
            address = TRANSPORTS[transport].format(dir=tmp, impl=impl.name)
            if transport not in IN_PROCESS:
                remote[transport] = address
                continue
            try:
                servers.append((impl, transport, impl.serve(transport, address, tls, loop), None))
            except Exception as exc:
                run.skip(impl.name, transport, f"server failed to start: {_describe(exc)}")
        if remote:
            peer = Peer(impl.name, remote, tls)
            peers.append(peer)
            pending.append((impl, peer))
    for impl, peer in pending:
        served, failed = peer.started()
        servers += [(impl, transport, address, peer) for transport, address in served.items()]
        for transport, reason in failed.items():
            run.skip(impl.name, transport, reason)
    targets = []
    for impl, transport, address, peer in servers:
        try:
            targets.append(
                Target(impl, transport, impl.client(transport, address, tls, loop), peer)
            )
        except Exception as exc:
            run.skip(impl.name, transport, f"client failed to connect: {_describe(exc)}")
    return targets


def _warm_up(run: Run, targets: list[Target]) -> list[Target]:
    """One untimed pass of each workload (lazy imports, first-use caches), dropping failures."""
    kept = []
    for target in targets:
        try:
            target.client.roundtrip(_WARM_UP_SECONDS)
            target.client.connect(_WARM_UP_SECONDS)
            for kind in run.plan.kinds:
                target.client.throughput(make_payload(kind, 2**10), _WARM_UP_SECONDS)
        except Exception as exc:
            run.skip(*target.key, f"failed while warming up: {_describe(exc)}")
            continue
        kept.append(target)
    return kept


def _steps(plan: Plan, targets: list[Target]) -> int:
    return plan.repeat * len(list(plan.points())) * len(targets)


def _measure(run: Run, targets: list[Target], progress: Progress) -> None:
    plan = run.plan
    meter = PeakMeter()
    live = list(targets)
    for repetition in range(plan.repeat):
        for point in plan.points():
            payload = make_payload(point.kind, point.size) if point.size else None
            for target in random.sample(live, len(live)):
                progress.step(
                    f"run {repetition + 1}/{plan.repeat}: {point.label}, "
                    f"{target.impl.label} {target.transport}"
                )
                try:
                    _measure_point(run, target, point, payload, meter)
                except Exception as exc:
                    run.skip(*target.key, f"failed during {point.label}: {_describe(exc)}")
                    live.remove(target)
            del payload
    progress.finish()


def _measure_point(run: Run, target: Target, point: Point, payload, meter: PeakMeter) -> None:
    client, plan = target.client, run.plan
    if point.workload == "roundtrip":
        run.record("roundtrip", target, point, client.roundtrip(plan.seconds))
    elif point.workload == "concurrent":
        run.record("concurrent", target, point, client.concurrent(plan.concurrency, plan.seconds))
    elif point.workload == "connect":
        run.record("connect", target, point, client.connect(plan.seconds))
    elif point.workload == "throughput":
        run.record("throughput", target, point, client.throughput(payload, plan.seconds))
    elif point.workload == "rss":
        gc.collect()
        meter.reset()
        if target.peer is not None:
            target.peer.reset_peak()
        client.throughput(payload, 0)  # exactly one message, acknowledged
        sender = meter.read()
        receiver = sender if target.peer is None else target.peer.peak()
        run.record("rss_sender", target, point, sender[1], peak=sender[0])
        run.record("rss_receiver", target, point, receiver[1], peak=receiver[0])
    else:
        raise ValueError(f"unknown workload {point.workload!r}")


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is still pending (listener tasks, comm readers), as ``asyncio.run`` does."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
