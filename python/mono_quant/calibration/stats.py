"""ActivationStats: everything the observers need about one activation, kept streaming.

Per tensor min/max (exact), per-channel min/max over axis 1 (NCHW
activations, [N, C] features), torch's moving-average min/max (the first
batch sets it, then ``v += c * (batch_v - v)``), an exact StreamingHistogram,
and the count of NaN/Inf seen.  Size depends on the channel and bin counts,
never on how many samples went through.
"""
from __future__ import annotations

from typing import Dict, Optional

import math

import numpy as np
import torch

from . import observer_kernels as ok
from .histogram import DEFAULT_BINS, StreamingHistogram

__all__ = ["ActivationStats", "EMA_CONSTANT"]

#: torch.ao MovingAverageMinMaxObserver's default averaging constant
EMA_CONSTANT = 0.01


class ActivationStats:
    def __init__(self, bins: Optional[int] = DEFAULT_BINS, per_channel: bool = True,
                 ema_constant: float = EMA_CONSTANT) -> None:
        self.min = np.array([np.inf], dtype=np.float32)
        self.max = np.array([-np.inf], dtype=np.float32)
        self.ema_min: Optional[float] = None
        self.ema_max: Optional[float] = None
        self.ema_constant = float(ema_constant)
        self.per_channel = bool(per_channel)
        self.channel_min: Optional[np.ndarray] = None
        self.channel_max: Optional[np.ndarray] = None
        self.histogram = StreamingHistogram(bins) if bins else None
        self.samples = 0      # first-dimension items seen
        self.numel = 0        # values seen, NaN/Inf included
        self.nonfinite = 0
        self.shape = None     # shape of the last batch without its first dimension

    def update(self, t: torch.Tensor) -> int:
        """Add one batch (a tensor whose first dimension is the batch); returns its NaN/Inf count."""
        x = ok.as_f32(t)
        bmin = np.array([np.inf], dtype=np.float32)
        bmax = np.array([-np.inf], dtype=np.float32)
        if self.histogram is not None:  # the histogram pass finds the batch's extremes anyway
            bad, bmin[0], bmax[0] = self.histogram.update_with_extremes(x)
        else:
            bad = ok.minmax(x, bmin, bmax)
        if x.ndim >= 2 and self.per_channel:
            if self.channel_min is None:
                self.channel_min = np.full(x.shape[1], np.inf, dtype=np.float32)
                self.channel_max = np.full(x.shape[1], -np.inf, dtype=np.float32)
            if self.channel_min.size == x.shape[1]:
                ok.minmax(x, self.channel_min, self.channel_max, channel_axis=1)
        if bmin[0] <= bmax[0]:  # some finite value in this batch
            np.minimum(self.min, bmin, out=self.min)
            np.maximum(self.max, bmax, out=self.max)
            if self.ema_min is None:
                self.ema_min, self.ema_max = float(bmin[0]), float(bmax[0])
            else:
                c = self.ema_constant
                self.ema_min += c * (float(bmin[0]) - self.ema_min)
                self.ema_max += c * (float(bmax[0]) - self.ema_max)
        self.samples += int(x.shape[0]) if x.ndim else 1
        self.numel += int(x.size)
        self.nonfinite += bad
        self.shape = tuple(x.shape[1:])
        return bad

    @property
    def has_data(self) -> bool:
        return bool(self.min[0] <= self.max[0])

    def nbytes(self) -> int:
        """Bytes of tracked state (what calibration keeps per activation)."""
        n = self.min.nbytes + self.max.nbytes
        if self.channel_min is not None:
            n += self.channel_min.nbytes + self.channel_max.nbytes
        if self.histogram is not None:
            n += self.histogram.counts.nbytes
        return n

    # ---- persistence: arrays and JSON-able scalars --------------------------------
    def to_arrays_and_meta(self):
        arrays: Dict[str, np.ndarray] = {}
        meta = {"min": float(self.min[0]), "max": float(self.max[0]), "ema_min": self.ema_min,
                "ema_max": self.ema_max, "ema_constant": self.ema_constant, "per_channel": self.per_channel,
                "samples": self.samples, "numel": self.numel, "nonfinite": self.nonfinite,
                "shape": list(self.shape) if self.shape is not None else None, "histogram": None}
        if self.channel_min is not None:
            arrays["channel_min"], arrays["channel_max"] = self.channel_min, self.channel_max
        if self.histogram is not None:
            hs = self.histogram.state()
            arrays["hist_counts"] = hs.pop("counts")
            meta["histogram"] = hs
        return arrays, meta

    @classmethod
    def from_arrays_and_meta(cls, arrays: Dict[str, np.ndarray], meta: dict) -> "ActivationStats":
        hist_meta = meta.get("histogram")
        s = cls(bins=None, per_channel=bool(meta["per_channel"]), ema_constant=float(meta["ema_constant"]))
        s.min = np.array([meta["min"]], dtype=np.float32)
        s.max = np.array([meta["max"]], dtype=np.float32)
        lo, hi = float(s.min[0]), float(s.max[0])
        # a range (finite, min <= max) or no data yet (+inf, -inf): a NaN or a reversed range became
        # a scale-1 range around 0 while the histogram held the real data
        if not ((math.isfinite(lo) and math.isfinite(hi) and lo <= hi) or (lo == math.inf and hi == -math.inf)):
            raise ValueError(f"min {meta['min']!r} / max {meta['max']!r}: a finite range with min <= max")
        s.ema_min = None if meta["ema_min"] is None else float(meta["ema_min"])
        s.ema_max = None if meta["ema_max"] is None else float(meta["ema_max"])
        s.samples, s.numel, s.nonfinite = int(meta["samples"]), int(meta["numel"]), int(meta["nonfinite"])
        if min(s.samples, s.numel, s.nonfinite) < 0:
            raise ValueError("negative sample counts")
        s.shape = None if meta["shape"] is None else tuple(int(d) for d in meta["shape"])
        if ("channel_min" in arrays) != ("channel_max" in arrays):
            raise ValueError("channel_min and channel_max must come together")
        if "channel_min" in arrays:
            cmin, cmax = arrays["channel_min"], arrays["channel_max"]
            if cmin.dtype != np.float32 or cmax.dtype != np.float32 or cmin.ndim != 1 or cmin.shape != cmax.shape:
                raise ValueError("channel_min / channel_max must be float32 vectors of one length")
            s.channel_min, s.channel_max = cmin.copy(), cmax.copy()
        if hist_meta is not None:
            if "hist_counts" not in arrays:
                raise ValueError("histogram counts missing")
            s.histogram = StreamingHistogram.from_state(dict(hist_meta, counts=arrays["hist_counts"]))
        return s
