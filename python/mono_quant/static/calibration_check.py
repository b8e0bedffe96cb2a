"""Static quantization needs calibration samples: an empty tensor, list or DataLoader gave
torch.ao-era internals ("no statistics: feed() calibration data first ... FusedFloat")."""
from __future__ import annotations

from ..errors import ConfigError

__all__ = ["require_samples"]


def require_samples(calibrator) -> None:
    """ConfigError when ``calibrator.feed`` ran the model on nothing."""
    if calibrator.samples == 0 and not any(s.samples for s in calibrator.stats.values()):
        raise ConfigError("calibration= gave no samples (an empty tensor, list, iterable or DataLoader): pass "
                          "inputs the model runs on, e.g. a few hundred of them (fewer than 100 warns)")
