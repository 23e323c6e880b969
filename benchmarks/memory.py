"""Peak resident memory of this process during one transfer.

On Linux the kernel keeps the high-water mark (``VmHWM``) and lets a process
reset it to its current RSS (``/proc/self/clear_refs``), so the peak of one
transfer is exact even when the copy lives for microseconds.  Elsewhere we
fall back to ``ru_maxrss``, a lifetime peak that cannot be reset (the growth
it yields is then an upper bound, flagged by :data:`METHOD`).
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import psutil

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _resettable() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


METHOD = "VmHWM" if _resettable() else "ru_maxrss (lifetime peak, not resettable)"


class PeakMeter:
    """``reset()`` before a transfer, ``read()`` after: ``(peak_rss, growth)`` in bytes."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._base = self._process.memory_info().rss

    def reset(self) -> None:
        if METHOD == "VmHWM":
            _CLEAR_REFS.write_text("5")
        self._base = self._process.memory_info().rss

    def read(self) -> tuple[int, int]:
        peak = _peak_rss()
        return peak, max(peak - self._base, 0)


def _peak_rss() -> int:
    if METHOD == "VmHWM":
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024
