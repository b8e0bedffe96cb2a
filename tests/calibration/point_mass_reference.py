"""The point-mass rule of calibration/ranges.py written plainly (NumPy nanmedian), the test oracle."""
import warnings

import numpy as np

from mono_quant.calibration.ranges import POINT_MASS_FACTOR, POINT_MASS_RADIUS

__all__ = ["point_masses_reference"]


def point_masses_reference(folded, one_sided):
    g = np.array(folded, dtype=np.float64)
    if g.size < 2:
        return g, np.zeros(g.size, dtype=bool)
    if one_sided:
        g[0] = g[1]
    r = POINT_MASS_RADIUS
    out, mask = g.copy(), np.zeros(g.size, dtype=bool)
    for j in range(g.size):
        neighbours = [g[k] for k in range(j - r, j + r + 1) if k != j and 0 <= k < g.size and g[k] != 0]
        if len(neighbours) >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                median = float(np.median(neighbours))
            if g[j] > POINT_MASS_FACTOR * median:
                out[j], mask[j] = median, True
    return out, mask
