"""Static quantization needs calibration samples: an empty tensor, list or DataLoader gave
torch.ao-era internals ("no statistics: feed() calibration data first ... FusedFloat")."""
from __future__ import annotations

from ..calibration.calibrator import bare_runner
from ..errors import ConfigError

__all__ = ["require_samples"]


def require_samples(calibrator, calibration=None) -> None:
    """ConfigError when ``calibrator.feed`` ran the model on nothing (``calibration``: what the caller gave,
    for the message: a callable that takes no argument ran the caller's own model, not the copy)."""
    if calibrator.samples == 0 and not any(s.samples for s in calibrator.stats.values()):
        if bare_runner(calibration):  # (its signature was read by feed already)
            raise ConfigError("calibration= is a callable that takes no argument: it ran your model, but static "
                              "quantization calibrates the copy it builds, which it passes to the callable: take "
                              "it and run it (calibration=lambda model: [model(x) for x in batches])")
        raise ConfigError("calibration= gave no samples (an empty tensor, list, iterable or DataLoader): pass "
                          "inputs the model runs on, e.g. a few hundred of them (fewer than 100 warns)")

