"""Per-layer static int8 for models torch.fx cannot trace.

Every Conv2d and Linear of (a copy of) the model becomes a static int8 layer
with a fixed input scale from calibration (module hooks: ``Calibrator`` on the
unmodified model), int8 GEMM, float output.  Nothing is fused (no BatchNorm
folding, no int8 between layers): the report says so, with the trace error.
"""
from __future__ import annotations

from typing import Dict

from torch import nn

from ..calibration import DEFAULT_BINS, Calibrator
from ..report import SkippedLayer
from ..result import QuantizationResult
from .calibration_check import require_samples
from .compiled import CompilesAsOneOp
from .eager_only import refuse_traced_input
from .modules import StaticConv2d, StaticLinear
from .report import StaticLayerReport, StaticReport

__all__ = ["quantize_per_layer", "PerLayerStatic"]


class PerLayerStatic(CompilesAsOneOp, nn.Module):
    """Wraps one static layer that takes and returns float NCHW (the fallback's unit)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self._register_for_compile()

    def forward(self, x):
        compiled = self.compiled_call((x,), None)  # torch.compile: one op (compiled.py)
        if compiled is not None:
            return compiled
        return self._forward_eager(x)

    def _forward_eager(self, x):
        refuse_traced_input((x,))
        y = self.layer(x)
        return y.contiguous() if y.dim() == 4 else y


def quantize_per_layer(model: nn.Module, cfg, calibration, reason: str) -> QuantizationResult:
    """``model`` is already a private eval-mode copy; its layers are replaced in place."""
    targets = {name: m for name, m in model.named_modules()
               if type(m) in (nn.Conv2d, nn.Linear) and not (isinstance(m, nn.Conv2d) and
                                                             (isinstance(m.padding, str) or m.padding_mode != "zeros"))}
    bins = None if cfg.observer == "minmax" else DEFAULT_BINS
    cal = Calibrator(model, bins=bins, per_channel=False)
    cal.types = (nn.Conv2d, nn.Linear)
    cal.feed(calibration, cfg.calibration_samples)
    require_samples(cal)
    ranges = cal.ranges(cfg.observer)
    report = StaticReport(capture="hooks", fallback_reason=reason, observer=cfg.observer, samples=cal.samples)
    replaced: Dict[str, nn.Module] = {}
    for name, m in targets.items():
        point = cal.aliases.get(f"{name}.input", f"{name}.input")
        r = ranges.get(point)
        if r is None:
            report.skipped.append(SkippedLayer(name, type(m).__name__, "never ran during calibration"))
            continue
        cls = StaticConv2d if isinstance(m, nn.Conv2d) else StaticLinear
        replaced[name] = PerLayerStatic(cls.from_float(m, None, r.scale, None, False))
        report.layers.append(StaticLayerReport(name, "conv" if cls is StaticConv2d else "linear", [name], None,
                                               "float", r.lo, r.hi, r.scale, None))
    for name, new in replaced.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    report.not_fused.append(("<model>", f"per-layer fallback, nothing fused: {reason}"))
    return QuantizationResult(model, report.skipped, report, cfg)
