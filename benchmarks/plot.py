"""PNG of throughput against payload size, one line per implementation and transport.

``inproc`` is left out: it hands messages over by reference, so its "throughput"
grows with the payload without bound and would flatten every other line.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.impls import IMPLEMENTATIONS
from benchmarks.plan import IN_PROCESS, MiB, format_size
from benchmarks.runner import Run

_STYLES = {"ours": "-", "distributed": "--", "raw": ":", "zmq": "-."}


def write_png(run: Run, environment: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = run.plan.kinds
    figure, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5), squeeze=False)
    transports = [t for t in run.transports if t not in IN_PROCESS]
    colors = {t: f"C{i}" for i, t in enumerate(transports)}
    for axis, kind in zip(axes[0], kinds, strict=True):
        for implementation, transport in run.targets:
            if transport not in colors:
                continue
            points = sorted(
                (r.size, r.median / MiB)
                for r in run.results.values()
                if r.workload == "throughput"
                and r.kind == kind
                and (r.implementation, r.transport) == (implementation, transport)
            )
            if not points:
                continue
            sizes, speeds = zip(*points, strict=True)
            axis.plot(
                sizes,
                speeds,
                _STYLES.get(implementation, "-"),
                color=colors[transport],
                marker="o",
                markersize=3,
                label=f"{IMPLEMENTATIONS[implementation].label} {transport}",
            )
        sizes = sorted({r.size for r in run.results.values() if r.workload == "throughput"})
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(sizes, [format_size(s) for s in sizes], rotation=30)
        axis.set_xlabel("payload per message")
        axis.set_ylabel("MiB/s until the receiver has it")
        axis.set_title(f"{kind} payloads")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="x-small", loc="lower right")
    figure.suptitle(
        f"One-way throughput on loopback, median of {run.plan.repeat} "
        f"({environment['cpus']} CPUs, {environment['date'][:10]})"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
