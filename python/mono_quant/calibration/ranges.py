"""Activation ranges from calibration statistics, and their int8 / int7 qparams.

Every search works on one StreamingHistogram (no second pass over data):
- ``percentile``: the range holding ``percentile`` % of the values (symmetric:
  of |x|; asymmetric: (100 - p) / 2 % cut from each tail), as ONNX Runtime's
  percentile calibrator;
- ``entropy``: TensorRT's KL search over |x| (symmetric by nature; an
  asymmetric request keeps the data's own side where it is narrower), point
  masses flattened first (``without_point_masses``);
- ``mse``: the range (a * min, a * max) that minimises the expected
  quantization error under the qparams the range gives.

Encodings: ``"int8"`` symmetric is -127..127 (the project's activation
encoding: no -128, so AVX2's ``vpmaddubsw`` sign trick stays exact),
asymmetric -128..127; ``"int7"`` symmetric -63..63, asymmetric 0..127 (the
7-bit "reduce_range" that keeps ``vpmaddubsw``'s 16-bit sums from
saturating on AVX2 without VNNI).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from .. import kernels
from . import observer_kernels as ok
from .histogram import StreamingHistogram

__all__ = ["ENCODINGS", "quant_range", "percentile_range", "entropy_range", "without_point_masses", "mse_range",
           "qparams_for_range", "POINT_MASS_FACTOR", "POINT_MASS_RADIUS"]

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


#: a bin holding more than POINT_MASS_FACTOR times the median of the POINT_MASS_RADIUS bins on each side
#: is a point mass for the entropy search (see entropy_range)
POINT_MASS_FACTOR = 8.0
POINT_MASS_RADIUS = 8


def without_point_masses(folded: np.ndarray, one_sided: bool) -> Tuple[np.ndarray, np.ndarray]:
    """(the |x| histogram with its point masses flattened, where they were).

    A point mass is many values at one number: the exact zeros of a ReLU (about half its
    outputs: the first bin of one-sided data, replaced by its neighbour's count as NVIDIA's
    histogram calibrator does), or the one output a channel gives on a constant input region
    (an image's uniform background gives each channel of the first conv one value, 1-2 % of
    all values each).  A range that holds a point mass rounds it with an error no larger than
    its neighbours', so it says nothing about how fine the levels must be; left in, it makes
    every long threshold look bad (Q smears it over a whole level) and the search clips the
    tail instead (2-12 % of the ReLU outputs of the Fashion-MNIST ResNet8).  A bin above
    POINT_MASS_FACTOR times the median of its (nonzero, at least two) neighbours gets that median."""
    g = np.array(folded, dtype=np.float64)
    mask = np.zeros(g.size, dtype=bool)
    if g.size < 2:
        return g, mask
    if one_sided:
        g[0] = g[1]
    # neighbours: the nonzero bins within POINT_MASS_RADIUS (data on a grid coarser than the bins,
    # such as normalised 8-bit pixels, fill one bin in four: zeros between them are no evidence)
    r = POINT_MASS_RADIUS
    window = np.lib.stride_tricks.sliding_window_view(np.pad(g, r), 2 * r + 1)
    neighbours = np.sort(np.delete(window, r, axis=1), axis=1)  # zeros first, then the nonzero ones
    populated = np.count_nonzero(neighbours, axis=1)
    first = neighbours.shape[1] - populated
    lo = np.minimum(first + (populated - 1) // 2, neighbours.shape[1] - 1)[:, None]
    hi = np.minimum(first + populated // 2, neighbours.shape[1] - 1)[:, None]
    median = 0.5 * (np.take_along_axis(neighbours, lo, 1) + np.take_along_axis(neighbours, hi, 1))[:, 0]
    some = populated >= 2  # a lone bin in an empty tail is an outlier, not a point mass
    mask = some & (g > POINT_MASS_FACTOR * median)
    g[mask] = median[mask]
    return g, mask


def entropy_range(h: StreamingHistogram, encoding: str = "int8", symmetric: bool = True,
                  stride: int = 1, one_sided_levels: Optional[int] = None) -> Tuple[float, float]:
    """TensorRT-style KL threshold t over |x|, point masses flattened where t holds them.

    The search runs on the histogram with its point masses flattened (without_point_masses);
    a point mass the threshold found would clip is put back at full weight (clipping it costs
    its whole mass: a saturated pixel value at the top of an image input) and the search
    runs again, until the threshold clips none of the flattened ones.
    Levels: the encoding's positive half (+1) for signed data; one-sided data (no negative
    value seen: ReLU outputs, sums of them) is a distribution on [0, t] and gets the codes
    the encoding spends there: ``one_sided_levels`` when given (static int8: 255, zero-point
    -127), else the positive half (symmetric) or all the codes (asymmetric)."""
    if _empty(h):
        return 0.0, 0.0
    qmin, qmax = quant_range(encoding, symmetric)
    folded, width = h.folded()
    one_sided = h.min >= 0.0
    if one_sided:
        levels = one_sided_levels if one_sided_levels is not None else (qmax + 1 if symmetric else qmax - qmin + 1)
    else:
        levels = quant_range(encoding, True)[1] + 1
    g, flattened = without_point_masses(folded, one_sided)
    while True:
        best, _ = ok.entropy_search(g, int(levels), stride)
        clipped = flattened.copy()
        clipped[:best] = False
        if not clipped.any():
            break
        g[clipped] = folded[clipped]
        flattened &= ~clipped
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
    if h.width * 2 >= hi - lo:
        # the data within two bins (activations below ~1e-27: the bins' width bottoms out at 2^-32):
        # every shrink scores alike and the first, 1/256 of the range, clipped 99% of the values
        t = max(-lo, hi)
        return (-t, t) if symmetric else (lo, hi)
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
