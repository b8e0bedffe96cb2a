"""Pure NumPy / torch twins of ``observer_kernels.py``: the test oracles.

Written for obviousness, not speed.  ``histogram`` is the one-shot
histogram of all the data on the grid the streaming rule ends with, so the
C streaming histogram must equal it exactly, whatever the batch split.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch

from ..kernels import reference
from .observer_kernels import HIST_MAX_INDEX_BITS, HIST_MIN_EXP

__all__ = ["minmax", "histogram", "hist_exp", "entropy_search", "mse_search"]


def minmax(x: np.ndarray, channel_axis=None) -> Tuple[np.ndarray, np.ndarray, int]:
    """(min, max, nonfinite) over the finite values; +inf/-inf where a channel has none."""
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    if channel_axis is None:
        axes = None
    else:
        axes = tuple(i for i in range(x.ndim) if i != channel_axis)
    mn = np.where(finite, x, np.inf).min(axis=axes, initial=np.inf)
    mx = np.where(finite, x, -np.inf).max(axis=axes, initial=-np.inf)
    return np.atleast_1d(mn).astype(np.float32), np.atleast_1d(mx).astype(np.float32), int((~finite).sum())


def _floor_index(v: np.ndarray, e: int) -> np.ndarray:
    return np.floor(np.asarray(v, dtype=np.float64) * 2.0 ** (-e)).astype(np.int64)


def hist_exp(mn: float, mx: float, bins: int) -> int:
    """The smallest e >= HIST_MIN_EXP the rule allows (searched upward, one e at a time)."""
    amax = max(abs(mn), abs(mx))
    e = HIST_MIN_EXP
    while True:
        fits_index = amax * 2.0 ** (-e) < 2.0 ** HIST_MAX_INDEX_BITS
        if fits_index and int(_floor_index(mx, e)) - int(_floor_index(mn, e)) + 1 <= bins:
            return e
        e += 1


def histogram(x: np.ndarray, bins: int):
    """(counts int64 [bins], k0, exp, min, max, nonfinite) of all of x in one shot."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    finite = x[np.isfinite(x)]
    counts = np.zeros(bins, dtype=np.int64)
    if finite.size == 0:
        return counts, 0, 0, 0.0, 0.0, int(x.size)
    mn, mx = float(finite.min()), float(finite.max())
    e = hist_exp(mn, mx, bins)
    k0 = int(_floor_index(mn, e))
    np.add.at(counts, _floor_index(finite, e) - k0, 1)
    return counts, k0, e, mn, mx, int(x.size - finite.size)


def entropy_search(h: np.ndarray, levels: int, stride: int = 1) -> Tuple[int, np.ndarray]:
    """Same contract as the C search (csrc/observers.h), candidate by candidate."""
    h = np.asarray(h, dtype=np.float64)
    m = h.size
    kl_curve = np.full(m + 1, np.nan)
    if m < levels:
        return m, kl_curve
    candidates = list(range(levels, m + 1, stride))
    if candidates[-1] != m:
        candidates.append(m)
    best, best_kl = m, math.inf
    for i in candidates:
        p = h[:i].copy()
        p[i - 1] += h[i:].sum()
        merged = i // levels
        q = np.zeros(i)
        for g in range(levels):
            start, end = g * merged, (i if g == levels - 1 else (g + 1) * merged)
            nonzero = p[start:end] != 0
            if nonzero.any():
                q[start:end][nonzero] = h[start:end].sum() / nonzero.sum()
        if p.sum() == 0:
            kl = 0.0
        elif h[:i].sum() == 0 or np.any((p > 0) & (q == 0)):
            kl = math.inf
        else:
            pn, qn = p / p.sum(), q / h[:i].sum()
            keep = pn > 0
            kl = float(np.sum(pn[keep] * np.log(pn[keep] / qn[keep])))
        kl_curve[i] = kl
        if kl < best_kl:
            best, best_kl = i, kl
    return best, kl_curve


def mse_search(h: np.ndarray, lo: float, width: float, range_lo: float, range_hi: float, qmin: int, qmax: int,
               symmetric: bool, candidates: int) -> Tuple[int, np.ndarray]:
    """Same contract as the C search: expected error of each shrunk range, qparams from reference.choose_qparams."""
    h = np.asarray(h, dtype=np.float64)
    centres = lo + (np.arange(h.size) + 0.5) * width
    a = (np.arange(candidates, dtype=np.float32) + 1) / np.float32(candidates)
    lo_c = torch.from_numpy(a * np.float32(range_lo))
    hi_c = torch.from_numpy(a * np.float32(range_hi))
    scale, zp = reference.choose_qparams(lo_c, hi_c, qmin, qmax, symmetric)
    s = scale.double().numpy()[:, None]
    z = zp.double().numpy()[:, None]
    qlo, qhi = (qmin - z) * s, (qmax - z) * s
    c = centres[None, :]
    cell = width * width / 12.0
    err = np.where(c < qlo, (c - qlo) ** 2 + cell, np.where(c > qhi, (c - qhi) ** 2 + cell, s * s / 12.0))
    total = h.sum()
    curve = (err * h[None, :]).sum(axis=1) / total if total > 0 else np.zeros(candidates)
    return int(np.argmin(curve)), curve
