"""Static-quantization calibration: observers (C where hot) and the Calibrator.

Layout-independent building blocks of static INT8 (issue 12): streaming
min/max and histograms, range searches (percentile, entropy, MSE), and a
hook-based Calibrator that never modifies the model.  See docs/static.md.
"""
from .calibrator import (CAPTURED_TYPES, MIN_RECOMMENDED_SAMPLES, OBSERVERS, ActivationRange, CalibrationWarning,
                         Calibrator)
from .histogram import DEFAULT_BINS, StreamingHistogram
from .ranges import ENCODINGS, entropy_range, mse_range, percentile_range, qparams_for_range, quant_range
from .stats import ActivationStats

__all__ = ["Calibrator", "ActivationRange", "ActivationStats", "CalibrationWarning", "CAPTURED_TYPES", "OBSERVERS",
           "MIN_RECOMMENDED_SAMPLES", "StreamingHistogram", "DEFAULT_BINS", "ENCODINGS", "quant_range",
           "percentile_range", "entropy_range", "mse_range", "qparams_for_range"]
