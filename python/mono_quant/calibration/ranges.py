"""Activation ranges from calibration statistics, and their int8 / int7 qparams.

Every search works on one StreamingHistogram (no second pass over data):
- ``percentile``: the range holding ``percentile`` % of the values (symmetric:
  of |x|; asymmetric: (100 - p) / 2 % cut from each tail), as ONNX Runtime's
  percentile calibrator;
- ``entropy``: TensorRT's KL search over |x| (symmetric by nature; an
  asymmetric request keeps the data's own side where it is narrower);
- ``mse``: the range (a * min, a * max) that minimises the expected
  quantization error under the qparams the range gives.

Encodings: ``"int8"`` symmetric is -127..127 (the project's activation
encoding: no -128, so AVX2's ``vpmaddubsw`` sign trick stays exact),
asymmetric -128..127; ``"int7"`` symmetric -63..63, asymmetric 0..127 (the
7-bit "reduce_range" that keeps ``vpmaddubsw``'s 16-bit sums from
saturating on AVX2 without VNNI).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from .. import kernels
from . import observer_kernels as ok
from .histogram import StreamingHistogram

__all__ = ["ENCODINGS", "quant_range", "percentile_range", "entropy_range", "mse_range", "qparams_for_range"]

ENCODINGS = {
    ("int8", True): (-127, 127),
    ("int8", False): (-128, 127),
    ("int7", True): (-63, 63),
    ("int7", False): (0, 127),
}


def quant_range(encoding: str = "int8", symmetric: bool = True) -> Tuple[int, int]:
    try:
        return ENCODINGS[(encoding, bool(symmetric))]
    except KeyError:
        raise ValueError(f"activation encoding must be 'int8' or 'int7', got {encoding!r}") from None


def _empty(h: StreamingHistogram) -> bool:
    return not h.has_data


def percentile_range(h: StreamingHistogram, percentile: float = 99.99, symmetric: bool = True) -> Tuple[float, float]:
    """Bin-edge range holding ``percentile`` % of the finite values, clamped to [min, max]."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if _empty(h):
        return 0.0, 0.0
    if symmetric:
        folded, width = h.folded()
        cdf = np.cumsum(folded) / folded.sum()
        m = int(np.searchsorted(cdf, percentile / 100.0 * (1 - 1e-12)))
        t = min((m + 1) * width, max(abs(h.min), abs(h.max)))
        return -t, t
    cut = (100.0 - percentile) / 200.0
    cdf = np.cumsum(h.counts) / h.total
    left = int(np.searchsorted(cdf, cut, side="right"))
    right = int(np.searchsorted(cdf, (1.0 - cut) * (1 - 1e-12)))
    edges = h.edges()
    lo = max(float(edges[min(left, h.bins - 1)]), h.min)
    hi = min(float(edges[min(right, h.bins - 1) + 1]), h.max)
    return lo, max(lo, hi)


def entropy_range(h: StreamingHistogram, encoding: str = "int8", symmetric: bool = True,
                  stride: int = 1) -> Tuple[float, float]:
    """TensorRT-style KL threshold t over |x| with as many levels as the encoding's positive half (+1)."""
    if _empty(h):
        return 0.0, 0.0
    qmin, qmax = quant_range(encoding, True)
    levels = qmax + 1
    folded, width = h.folded()
    best, _ = ok.entropy_search(folded, levels, stride)
    t = min(best * width, max(abs(h.min), abs(h.max)))
    if symmetric:
        return -t, t
    return max(h.min, -t), min(h.max, t)


def mse_range(h: StreamingHistogram, encoding: str = "int8", symmetric: bool = True,
              candidates: int = 256) -> Tuple[float, float]:
    """The shrink a * (min, max), a = (j + 1) / candidates, of least expected quantization error."""
    if _empty(h):
        return 0.0, 0.0
    qmin, qmax = quant_range(encoding, symmetric)
    lo, hi = min(h.min, 0.0), max(h.max, 0.0)
    best, _ = ok.mse_search(h.counts.astype(np.float64), h.lo, h.width, lo, hi, qmin, qmax, symmetric, candidates)
    a = np.float32(best + 1) / np.float32(candidates)
    if symmetric:  # the qparams only saw a * max(|lo|, |hi|)
        t = float(a * np.float32(max(-lo, hi)))
        return -t, t
    return float(a * np.float32(lo)), float(a * np.float32(hi))


def qparams_for_range(lo: float, hi: float, encoding: str = "int8", symmetric: bool = True) -> Tuple[float, int]:
    """(scale, zero_point) of the range under the project's formula (mq_choose_qparams)."""
    qmin, qmax = quant_range(encoding, symmetric)
    scale, zp = kernels.choose_qparams(torch.tensor([lo], dtype=torch.float32),
                                       torch.tensor([hi], dtype=torch.float32), qmin, qmax, symmetric)
    return float(scale[0]), int(zp[0])
