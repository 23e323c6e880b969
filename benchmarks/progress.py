"""Progress on stderr: a redrawn bar on a terminal, a line per tenth otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

_WIDTH = 110


class Progress:
    def __init__(self, total: int, stream: TextIO = sys.stderr, bar: int = 30):
        self._total, self._stream, self._bar = max(total, 1), stream, bar
        self._done = 0
        self._start = time.monotonic()
        self._terminal = stream.isatty()

    def step(self, label: str) -> None:
        before = 10 * self._done // self._total
        self._done += 1
        fraction = self._done / self._total
        elapsed = time.monotonic() - self._start
        if self._terminal:
            filled = "#" * int(self._bar * fraction)
            line = (
                f"[{filled.ljust(self._bar, '.')}] {self._done}/{self._total} "
                f"{elapsed:3.0f}s, ~{elapsed / fraction - elapsed:3.0f}s left  {label}"
            )
            self._stream.write("\r" + line[:_WIDTH].ljust(_WIDTH))
        elif 10 * self._done // self._total > before:
            self._stream.write(f"{100 * fraction:3.0f}% done ({elapsed:.0f} s)\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._terminal:
            self._stream.write("\r" + " " * _WIDTH + "\r")
            self._stream.flush()
