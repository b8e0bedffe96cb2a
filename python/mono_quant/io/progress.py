"""A one-line progress bar on stderr for long work (bytes done / total, rate)."""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

__all__ = ["Progress"]


class Progress:
    """Draws ``[#####     ]  52%  2.1/4.0 GB  1.3 GB/s  name`` at most 10 times a second.
    Does nothing when ``enabled`` is false."""

    def __init__(self, total_bytes: int, enabled: bool, stream: Optional[TextIO] = None, width: int = 30):
        self.total = max(int(total_bytes), 1)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def update(self, nbytes: int, label: str = "") -> None:
        self.done += int(nbytes)
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw < 0.1 and self.done < self.total:
            return
        self._last_draw = now
        frac = min(self.done / self.total, 1.0)
        filled = int(frac * self.width)
        rate = self.done / max(now - self._start, 1e-9) / 1e9
        line = (f"\r[{'#' * filled}{' ' * (self.width - filled)}] {frac * 100:5.1f}%  "
                f"{self.done / 1e9:.2f}/{self.total / 1e9:.2f} GB  {rate:.2f} GB/s  {label[:40]:<40}")
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
