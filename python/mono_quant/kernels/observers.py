"""Typed wrappers over the observer kernels of ``mono_quant._C`` (csrc/observers.c).

Used by the calibration package (``calibration.observer_kernels`` names this module);
the pure twins with the same names are in ``calibration/observer_reference.py``.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .. import _C

__all__ = ["HIST_MIN_EXP", "HIST_MAX_INDEX_BITS", "HIST_MIN_BINS", "HIST_MAX_BINS", "as_f32", "minmax", "hist_update",
           "entropy_search", "mse_search"]

# the binning rule's constants (csrc/observers.h)
HIST_MIN_EXP = -32
HIST_MAX_INDEX_BITS = 52
HIST_MIN_BINS = 16
HIST_MAX_BINS = 1 << 24


def as_f32(x) -> np.ndarray:
    """A float32 NumPy view (or copy) of a CPU tensor or array."""
    if hasattr(x, "detach"):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        if x.dtype.is_complex:
            raise TypeError(f"observers take real tensors, got {x.dtype}")
        x = x.float().contiguous().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def minmax(x, mn: np.ndarray, mx: np.ndarray, channel_axis=None, reference: bool = False) -> int:
    """Lower ``mn`` / raise ``mx`` (float32, updated in place) with x's finite values.

    ``channel_axis=None``: one value each (per tensor); ``1``: one per channel
    of axis 1 (NCHW activations, [N, C] features).  Returns the number of
    NaN/Inf elements skipped.
    """
    a = as_f32(x)
    if channel_axis is None:
        v = a.reshape(1, 1, -1)
    else:
        if a.ndim < 2 or channel_axis != 1:
            raise ValueError(f"per-channel statistics need channel_axis=1 and a tensor of rank >= 2, "
                             f"got channel_axis={channel_axis} and shape {tuple(a.shape)}")
        v = a.reshape(a.shape[0], a.shape[1], int(np.prod(a.shape[2:])))  # -1 fails on empty arrays
    return _C.obs_minmax(v, mn, mx, reference=reference)


def hist_update(x, counts: np.ndarray, grid: Tuple[int, int, bool, float, float]) -> Tuple[tuple, int, float, float]:
    """Add x's finite values to ``counts`` (int64, in place).

    Returns (new grid, NaN/Inf count, this batch's min, this batch's max); the
    batch extremes are +inf / -inf when it held no finite value."""
    out = _C.obs_hist_update(as_f32(x).reshape(-1), counts, *grid)
    return tuple(out[:5]), out[5], out[6], out[7]


def entropy_search(h: np.ndarray, levels: int, stride: int = 1) -> Tuple[int, np.ndarray]:
    """Number of unit bins of the |x| histogram ``h`` to keep, and the KL curve (see observers.h)."""
    return _C.obs_entropy_search(np.ascontiguousarray(h, dtype=np.float64), int(levels), int(stride))


def mse_search(h: np.ndarray, lo: float, width: float, range_lo: float, range_hi: float, qmin: int, qmax: int,
               symmetric: bool, candidates: int) -> Tuple[int, np.ndarray]:
    """Best shrink factor index j (range * (j + 1) / candidates) and every candidate's expected error."""
    return _C.obs_mse_search(np.ascontiguousarray(h, dtype=np.float64), float(lo), float(width), float(range_lo),
                             float(range_hi), int(qmin), int(qmax), bool(symmetric), int(candidates))
