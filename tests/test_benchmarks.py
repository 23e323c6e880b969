"""``python -m benchmarks`` (the README's first command) keeps working: a quick run
produces every workload for every implementation and transport, with sane numbers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import weakref
from pathlib import Path

import numpy
import pytest

from benchmarks.workloads import (
    ACK,
    CommAPI,
    burst_throughput,
    next_burst,
    start_listener,
)

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {"roundtrip", "concurrent", "connect", "throughput", "rss_sender", "rss_receiver"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--json",
            str(out / "r.json"),
            "--plot",
            str(out / "r.png"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads((out / "r.json").read_text()), (out / "r.png").read_bytes()


def test_quick_run_compares_ours_with_distributed_and_raw_sockets(quick_run):
    stdout, data, _ = quick_run
    targets = {(t["implementation"], t["transport"]) for t in data["targets"]}
    assert {("ours", "tcp"), ("distributed", "tcp"), ("raw", "tcp"), ("zmq", "tcp")} <= targets
    assert {("ours", "inproc"), ("ours", "tls"), ("distributed", "tls")} <= targets
    assert "tcp://" in stdout and "ours/distributed" in stdout and "ours/raw" in stdout


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_every_target_has_every_workload_with_sane_numbers(quick_run, workload):
    _, data, _ = quick_run
    sizes = data["plan"]["sizes"]
    for target in data["targets"]:
        rows = [
            r
            for r in data["results"]
            if r["workload"] == workload
            and (r["implementation"], r["transport"])
            == (target["implementation"], target["transport"])
        ]
        where = f"{workload} for {target}"
        if workload == "throughput":
            assert sorted((r["kind"], r["size"]) for r in rows) == sorted(
                (kind, size) for kind in ("bytes", "numpy") for size in sizes
            ), where
        else:
            assert len(rows) == (2 if workload.startswith("rss") else 1), where
        for row in rows:
            assert len(row["samples"]) == data["plan"]["repeat"], where
            if workload.startswith("rss"):
                # growth of a process that holds a Python interpreter: >= 0, below its peak
                assert all(
                    0 <= g < p for g, p in zip(row["samples"], row["peak_rss"], strict=True)
                ), where
                assert min(row["peak_rss"]) > 10 * 2**20, where
            else:
                assert row["median"] > 0, where
                if workload == "throughput":  # loopback: more than 10 KB/s, less than 1 PB/s
                    assert 1e4 < row["median"] < 1e15, where


def test_plot_is_a_png(quick_run):
    assert quick_run[2].startswith(b"\x89PNG\r\n\x1a\n")


def test_unknown_transport_is_named_in_the_error():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "tcp,carrier-pigeon"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert "carrier-pigeon" in result.stderr


def test_bad_size_is_named_in_the_error():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--sizes", "1KiB,lots"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert "lots" in result.stderr


def test_a_burst_is_reported_once_it_fills_half_the_time_box():
    assert next_burst(3, 0.5, 1.0) is None
    assert next_burst(1, 0.9, 1.0) == 3  # one large message alone is not reported
    assert next_burst(1, 0.0, 0) is None  # no time box: one message
    assert next_burst(10, 0.01, 1.0) == 1000  # sized from the pace to fill the box
    assert next_burst(1, 0.0, 1.0) == 100  # grows at most 100x per burst
    assert next_burst(5, 0.4999, 1.0) == 11  # always grows


def test_burst_throughput_reports_the_acknowledged_burst():
    """A sender whose writes return at once (pyzmq) is timed until the ack, not until the write."""
    bursts = []

    def burst(count):  # a link that moves 1000 messages/s, whatever the writes claim
        bursts.append(count)
        return count / 1000

    assert burst_throughput(burst, 1024, 0.1) == pytest.approx(1024 * 1000)
    assert bursts[-1] >= 50 and len(bursts) <= 3


async def test_the_comm_server_drops_each_message_before_waiting_for_the_next():
    """As the raw and pyzmq servers do: holding the last message while the next
    arrives would make every large message need a second fresh buffer."""
    api = CommAPI.load("ours")
    listener = await start_listener(api, "inproc://", {})
    comm = await api.comm.connect(listener.contact_address)
    payload = numpy.ones(10)  # inproc hands the very object over
    dropped = weakref.ref(payload)
    await comm.write({"op": "data", "ack": True, "payload": payload})
    del payload
    assert await comm.read() == ACK
    await asyncio.sleep(0.05)  # the server is back waiting for a message
    assert dropped() is None
    await comm.close()
    listener.stop()
