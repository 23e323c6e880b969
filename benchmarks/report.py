"""The terminal table (one block per transport) and the JSON document."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from benchmarks.impls import IMPLEMENTATIONS
from benchmarks.plan import IN_PROCESS, MiB, format_size
from benchmarks.runner import Result, Run

_RATIO_AGAINST = ("distributed", "raw")  # ratio columns: ours / these
_ROWS = ("roundtrip", "concurrent", "connect", "throughput", "rss_sender", "rss_receiver")


def to_json(run: Run, environment: dict) -> dict:
    return {
        "environment": environment,
        "plan": asdict(run.plan),
        "transports": run.transports,
        "targets": [{"implementation": i, "transport": t} for i, t in run.targets],
        "skipped": run.skipped,
        "results": [
            {
                "workload": r.workload,
                "implementation": r.implementation,
                "transport": r.transport,
                "kind": r.kind,
                "size": r.size,
                "unit": r.unit,
                "median": r.median,
                "samples": r.samples,
                **({"peak_rss": r.peaks} if r.peaks else {}),
            }
            for r in run.results.values()
        ],
    }


def write_json(run: Run, environment: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_json(run, environment), indent=1) + "\n")


def table(run: Run) -> str:
    blocks = [_transport_table(run, transport) for transport in run.transports]
    if run.skipped:
        reasons = [f"  {s['implementation']} {s['transport']}: {s['reason']}" for s in run.skipped]
        blocks.append("\n".join(["Not run:", *reasons]))
    return "\n\n".join(block for block in blocks if block)


def _row_label(result: Result, concurrency: int) -> str:
    size = f"{result.kind} {format_size(result.size)}" if result.size else ""
    return {
        "roundtrip": "round trips/s, 1 comm",
        "concurrent": f"round trips/s, {concurrency} comms",
        "connect": "connects/s (with handshake)",
        "throughput": f"MiB/s, {size}",
        "rss_sender": f"RSS growth sender, {size}",
        "rss_receiver": f"RSS growth receiver, {size}",
    }[result.workload]


def _format(result: Result) -> str:
    value = result.median
    if result.workload.startswith("rss"):
        return f"+{value / MiB:.1f} MiB"
    if result.workload == "throughput":
        value /= MiB
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2g}"
    return f"{value:,.0f}"


def _ratio(ours: Result | None, other: Result | None) -> str:
    if ours is None or other is None:
        return "-"
    if ours.workload.startswith("rss") and other.median < MiB:
        return "-"  # growth near zero: a ratio would be noise
    return f"{ours.median / other.median:.2f}x" if other.median else "-"


def _transport_table(run: Run, transport: str) -> str:
    names = [name for name in IMPLEMENTATIONS if (name, transport) in run.targets]
    if not names:
        return ""
    by_row: dict[tuple, dict[str, Result]] = {}
    for result in run.results.values():
        if result.transport == transport:
            row = (_ROWS.index(result.workload), result.kind or "", result.size or 0)
            by_row.setdefault(row, {})[result.implementation] = result
    ratios = [name for name in _RATIO_AGAINST if name in names and "ours" in names]
    header = [
        "",
        *(IMPLEMENTATIONS[name].label for name in names),
        *(f"ours/{name}" for name in ratios),
    ]
    rows = [header]
    for key in sorted(by_row):
        results = by_row[key]
        any_result = next(iter(results.values()))
        rows.append(
            [
                _row_label(any_result, run.plan.concurrency),
                *(_format(results[name]) if name in results else "-" for name in names),
                *(_ratio(results.get("ours"), results.get(name)) for name in ratios),
            ]
        )
    where = "both ends in this process" if transport in IN_PROCESS else "server in its own process"
    title = (
        f"{transport}:// ({where}; median of {run.plan.repeat} run(s); "
        "higher is better, except RSS growth)"
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [title]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
