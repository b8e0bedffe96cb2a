"""Per-layer static int8 for models torch.fx cannot trace.

Every Conv2d, Conv1d and Linear of (a copy of) the model becomes a static int8 layer
with a fixed input scale from calibration (module hooks: ``Calibrator`` on the
unmodified model), int8 GEMM, float output.  Nothing is fused (no BatchNorm
folding, no int8 between layers): the report says so, with the trace error.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..calibration import DEFAULT_BINS, Calibrator
from ..report import SkippedLayer
from ..result import QuantizationResult
from .calibration_check import require_samples
from .compiled import CompilesAsOneOp
from .eager_only import refuse_traced_input, warn_if_grad_input
from .layer_errors import raise_named_input_problem
from .capture import LAYER_KINDS
from .convert import LAYER_CLASSES
from .qparams_state import check_whole_load
from .report import StaticLayerReport, StaticReport

__all__ = ["quantize_per_layer", "static_targets", "PerLayerStatic"]


class PerLayerStatic(CompilesAsOneOp, nn.Module):
    """Wraps one static layer that takes and returns float (NCHW, or NCL for a Conv1d: the fallback's unit).
    ``name``: its qualified name in the model, which the wrong input width's error gives."""

    #: quantize() of a model holding it keeps it as it is (mixed.py: quantized already)
    static_int8_layer = True

    def __init__(self, layer: nn.Module, name: Optional[str] = None):
        super().__init__()
        self.layer = layer
        self.layer_name = name
        self._register_for_compile()

    def _apply(self, fn, *args, **kwargs):
        # The model's root is the user's class, which casts its children one by one: refusing a
        # dtype cast here would leave the layers before this one cast (a half-converted model).
        # The static layer stays float32 (its kernels read float32 scales and biases) and forward
        # hands back the input's dtype; a device move still reaches the layer, which refuses it.
        probe = fn(torch.zeros(1))
        if isinstance(probe, torch.Tensor) and probe.device.type == "cpu" and probe.dtype.is_floating_point:
            return self
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x):
        compiled = self.compiled_call((x,), None)  # torch.compile: one op (compiled.py)
        y = compiled if compiled is not None else self._forward_eager(x)
        # float32 out of the kernels; a model cast to another float dtype goes on in that one
        return y.to(x.dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() and y.dtype != x.dtype else y

    def _forward_eager(self, x):
        refuse_traced_input((x,))
        warn_if_grad_input((x,))
        try:  # (free when nothing is raised)
            y = self.layer(x)
        except ValueError:
            raise_named_input_problem(self.layer, getattr(self, "layer_name", None), (x,))
            raise
        return y.contiguous() if y.dim() in (3, 4) else y  # (a conv's output: a channels-last view)


def _float_reason(m: nn.Module) -> Optional[str]:
    """Why a weight-bearing module this path never replaces stays float, or None (a Conv2d / Conv1d /
    Linear it takes)."""
    if type(m) in LAYER_KINDS:
        return None
    if any(p.dim() >= 2 for p in m.parameters(recurse=False)):
        return "static int8 replaces exact Conv2d, Conv1d and Linear layers only: runs in float"
    return ""  # no weight of its own (a container, a norm, an activation): not a layer


def static_targets(model: nn.Module, keep_float: Optional[Callable[[str, nn.Module], Optional[str]]] = None,
                   held: frozenset = frozenset()) -> Tuple[Dict[str, nn.Module], List[SkippedLayer]]:
    """({name: layer} of the Conv2d / Conv1d / Linear layers static int8 takes, a SkippedLayer per layer with a
    weight left float); ``keep_float`` and ``held`` as for quantize_per_layer.  The fx capture takes
    no layer outside these (it also needs a layer called with one positional input)."""
    targets: Dict[str, nn.Module] = {}
    left_float: List[SkippedLayer] = []
    for name, m in model.named_modules():
        if id(m) in held:
            continue
        why = _float_reason(m)
        if why is None and keep_float is not None:
            why = keep_float(name, m)
        if why is None:
            targets[name] = m
        elif why:
            left_float.append(SkippedLayer(name, type(m).__name__, why))
    return targets, left_float


def quantize_per_layer(model: nn.Module, cfg, calibration, reason: str,
                       keep_float: Optional[Callable[[str, nn.Module], Optional[str]]] = None,
                       held: frozenset = frozenset(), skipped: Iterable[SkippedLayer] = ()) -> QuantizationResult:
    """``model`` is already a private eval-mode copy; its layers are replaced in place.  ``keep_float(name,
    layer)``: why a Conv2d / Conv1d / Linear stays float (include / exclude), or None; ``held``: ids of the modules
    of layers quantized already (never touched), listed in ``skipped`` (with every layer left float)."""
    report = StaticReport(capture="hooks", fallback_reason=reason, observer=cfg.observer, samples=0)
    report.skipped.extend(skipped)
    targets, left_float = static_targets(model, keep_float, held)
    report.skipped.extend(left_float)
    if not targets:  # nothing to calibrate (every layer left float, or static already): the model as it is
        return QuantizationResult(model, report.skipped, report, cfg)
    bins = None if cfg.observer == "minmax" else DEFAULT_BINS
    cal = Calibrator(model, bins=bins, per_channel=False)
    cal.types = tuple(LAYER_KINDS)
    cal.feed(calibration, cfg.calibration_samples)
    require_samples(cal, calibration)
    ranges = cal.ranges(cfg.observer)
    report.samples = cal.samples
    replaced: Dict[str, nn.Module] = {}
    for name, m in targets.items():
        point = cal.aliases.get(f"{name}.input", f"{name}.input")
        r = ranges.get(point)
        if r is None:
            report.skipped.append(SkippedLayer(name, type(m).__name__, "its input was never seen during calibration "
                                               "(it never ran, or took its input by keyword): runs in float"))
            continue
        kind = LAYER_KINDS[type(m)][0]
        replaced[name] = PerLayerStatic(LAYER_CLASSES[kind].from_float(m, None, r.scale, None, False), name)
        report.layers.append(StaticLayerReport(name, kind, [name], None,
                                               "float", r.lo, r.hi, r.scale, None))
    for name, new in replaced.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    report.not_fused.append(("<model>", f"per-layer fallback, nothing fused: {reason}"))
    check_whole_load(model)  # a refused load_state_dict leaves every layer as it was
    return QuantizationResult(model, report.skipped, report, cfg)
