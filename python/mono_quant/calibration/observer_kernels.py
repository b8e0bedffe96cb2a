"""The observer kernels, as the calibration code names them: :mod:`mono_quant.kernels.observers`
(``kernels/`` is the one package that talks to the C extension)."""
from ..kernels.observers import (HIST_MAX_BINS, HIST_MAX_INDEX_BITS, HIST_MIN_BINS, HIST_MIN_EXP, as_f32,
                                 entropy_search, hist_update, minmax, mse_search)

__all__ = ["HIST_MIN_EXP", "HIST_MAX_INDEX_BITS", "HIST_MIN_BINS", "HIST_MAX_BINS", "as_f32", "minmax", "hist_update",
           "entropy_search", "mse_search"]
