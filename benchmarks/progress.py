"""A one-line progress bar on stderr (only when stderr is a terminal)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30):
        self._total, self._stream, self._width = max(total, 1), stream, width
        self._done = 0
        self._start = time.monotonic()
        self._enabled = stream.isatty()

    def step(self, label: str) -> None:
        self._done += 1
        if not self._enabled:
            return
        fraction = self._done / self._total
        filled = int(self._width * fraction)
        elapsed = time.monotonic() - self._start
        left = elapsed / fraction - elapsed
        bar = "#" * filled + "." * (self._width - filled)
        line = f"[{bar}] {self._done}/{self._total} {elapsed:4.0f}s, ~{left:3.0f}s left  {label}"
        self._stream.write("\r" + line[:110].ljust(110))
        self._stream.flush()

    def finish(self) -> None:
        if self._enabled:
            self._stream.write("\r" + " " * 110 + "\r")
            self._stream.flush()
