"""StreamingHistogram: a fixed number of bins over a range that grows, exact counts.

Memory is ``bins`` int64 counts and a few scalars, whatever the number of
samples.  The binning rule (csrc/observers.h): bins of width 2**exp on a grid
anchored at 0, exp the smallest the data's range allows, so a wider batch
merges whole bins and the result equals the one-shot histogram of all the
data on the final grid, whatever the batch split or order.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from . import observer_kernels as ok

__all__ = ["StreamingHistogram", "DEFAULT_BINS"]

#: As torch.ao HistogramObserver and ORT; at least half of them cover [min, max] (the price of exact re-binning).
DEFAULT_BINS = 2048


class StreamingHistogram:
    """Histogram of every finite value passed to ``update``; NaN/Inf are counted apart."""

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        bins = int(bins)
        if not ok.HIST_MIN_BINS <= bins <= ok.HIST_MAX_BINS:
            raise ValueError(f"bins must be in {ok.HIST_MIN_BINS}..{ok.HIST_MAX_BINS}, got {bins}")
        self.counts = np.zeros(bins, dtype=np.int64)
        self.k0, self.exp, self.has_data, self.min, self.max = 0, 0, False, 0.0, 0.0
        self.nonfinite = 0

    @property
    def bins(self) -> int:
        return self.counts.size

    @property
    def width(self) -> float:
        """Bin width (a power of two)."""
        return 2.0 ** self.exp

    @property
    def lo(self) -> float:
        """Left edge of bin 0."""
        return self.k0 * self.width

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def update(self, x) -> int:
        """Add a tensor or array's values; returns how many were NaN/Inf."""
        return self.update_with_extremes(x)[0]

    def update_with_extremes(self, x):
        """``update`` that also returns the batch's own (min, max) (inf, -inf when none is finite)."""
        grid, bad, bmin, bmax = ok.hist_update(x, self.counts, (self.k0, self.exp, self.has_data, self.min, self.max))
        self.k0, self.exp, self.has_data, self.min, self.max = grid
        self.nonfinite += bad
        return bad, bmin, bmax

    def edges(self) -> np.ndarray:
        return (self.k0 + np.arange(self.bins + 1, dtype=np.float64)) * self.width

    def folded(self):
        """(counts of |x| in bins [m v, (m+1) v), m = 0..; v) as float64, trimmed after the last nonzero.

        Exact because the grid is anchored at 0: signed bin k >= 0 is |x| bin k,
        signed bin k < 0 is |x| bin -k - 1 (a negative value exactly on an edge
        lands one bin low).  Data far from 0 (a window at k0 >> bins) would
        give a huge array: bins are then merged by powers of two (exactly) so
        at most ``self.bins`` remain, and the width v = 2**d * width says so."""
        k = self.k0 + np.arange(self.bins, dtype=np.int64)
        m = np.where(k >= 0, k, -k - 1)
        nz = self.counts != 0
        if not nz.any():
            return np.zeros(0), self.width
        m = m[nz]
        d = 0
        while (int(m.max()) >> d) + 1 > self.bins:
            d += 1
        m = m >> d
        out = np.zeros(int(m.max()) + 1)
        np.add.at(out, m, self.counts[nz].astype(np.float64))
        return out, self.width * 2.0 ** d

    # ---- persistence (arrays + JSON-able scalars; see calibrator.py) ----
    def state(self) -> Dict[str, object]:
        return {"counts": self.counts, "k0": int(self.k0), "exp": int(self.exp), "has_data": bool(self.has_data),
                "min": float(self.min), "max": float(self.max), "nonfinite": int(self.nonfinite)}

    @classmethod
    def from_state(cls, state: Dict[str, object]) -> "StreamingHistogram":
        """Rebuild from ``state()``; raises ValueError when it does not follow the rule."""
        counts = np.asarray(state["counts"])
        if counts.dtype != np.int64 or counts.ndim != 1:
            raise ValueError(f"histogram counts must be 1-D int64, got {counts.dtype} {counts.shape}")
        if (counts < 0).any():
            raise ValueError("histogram counts must be non-negative")
        h = cls(counts.size)
        h.counts = counts.copy()
        h.k0, h.exp = int(state["k0"]), int(state["exp"])
        h.has_data, h.min, h.max = bool(state["has_data"]), float(state["min"]), float(state["max"])
        h.nonfinite = int(state["nonfinite"])
        if not h.has_data and h.counts.any():
            raise ValueError("histogram has counts but no range")
        if h.has_data:  # the C side checks the grid against the rule; an empty update does exactly that
            h.update(np.zeros(0, dtype=np.float32))
        return h
