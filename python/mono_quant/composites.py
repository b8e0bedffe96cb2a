"""quantize() of the layers that hold several weight matrices (nn.LSTM, nn.GRU,
nn.MultiheadAttention): each matrix is quantized as the nn.Linear it is used as (same
path, options, report line and tied-weight sharing as a model's Linear layers), and the
quantized children are put in the composite (:mod:`mono_quant.modules.composite`)."""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .modules.composite import is_composite
from .report import SkippedLayer
from .selection import too_small_reason

__all__ = ["composite_skip_reason", "quantize_composite", "children_of_composites", "attention_out_proj_keys"]

#: why a state_dict's attention out_proj.weight stays float (its in_proj is no ``*.weight``)
ATTENTION_OUT_PROJ_REASON = ("out_proj of an nn.MultiheadAttention (in_proj_weight beside it): the float attention "
                             "reads the weight directly, and a state_dict quantizes no in_proj_weight, so the "
                             "attention stays float (quantize the model to quantize it as a whole)")


def composite_skip_reason(qcls, module: nn.Module, cfg, weights) -> Optional[str]:
    """Why a selected composite layer stays float, or None."""
    if weights is not None:
        return (f"quantize(state_dict, model=...) does not build a quantized {type(module).__name__} "
                f"(quantize the model itself): kept float")
    reason = qcls.skip_reason(module)
    numel = sum(w.numel() for _, w, _ in qcls.child_specs(module))
    if reason is None:
        reason = too_small_reason(numel, cfg)
    return reason


def _linear_over(weight: torch.Tensor, bias: Optional[torch.Tensor], training: bool) -> nn.Linear:
    """An nn.Linear whose weight is ``weight`` itself (its id keys tied-weight sharing)."""
    linear = nn.Linear(1, 1, bias=False, device="meta")
    linear.out_features, linear.in_features = int(weight.shape[0]), int(weight.shape[1])
    linear.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach(), requires_grad=False)
    linear.train(training)
    return linear


def quantize_composite(layers, name: str, module: nn.Module, names: List[str], qcls) -> Optional[SkippedLayer]:
    """Quantize composite layer ``module`` with ``layers`` (api's per-model layer quantizer):
    each child as a Linear named ``<name>.<child>``, then the composite into ``layers.memo``.
    Returns a SkippedLayer (and undoes its children) when one of its weights can't be."""
    first_report, first_name = len(layers.report.layers), len(layers.quantized_names)
    children = {}
    for child, weight, bias in qcls.child_specs(module):
        linear = _linear_over(weight, bias, module.training)
        child_name = f"{name}.{child}" if name else child
        skip = layers.quantize(child_name, linear, [child_name])
        if skip is not None:
            del layers.report.layers[first_report:]
            del layers.quantized_names[first_name:]
            return SkippedLayer(name, type(module).__name__, f"{child}: {skip.reason}")
        children[child] = layers.memo.pop(id(linear))
    for i in range(first_report, len(layers.report.layers)):  # the report says what they were
        layers.report.layers[i] = replace(layers.report.layers[i], type=type(module).__name__)
    layers.memo[id(module)] = qcls.from_float(module, children)
    layers.quantized_names.extend(names)
    return None


def children_of_composites(targets: List[Tuple[str, nn.Module]], skipped: List[SkippedLayer],
                           qmodule_for) -> List[SkippedLayer]:
    """``skipped`` less the submodules of a composite that will be quantized (an
    nn.MultiheadAttention's ``out_proj`` is quantized with it, not left float)."""
    prefixes = [name + "." if name else "" for name, m in targets if is_composite(qmodule_for(m))]
    if not prefixes:
        return skipped
    return [s for s in skipped if not any(s.name.startswith(p) for p in prefixes)]


def attention_out_proj_keys(keys) -> Dict[str, Tuple[str, str]]:
    """The ``*.out_proj.weight`` keys of nn.MultiheadAttention modules among a state_dict's
    ``keys`` (an ``in_proj_weight`` or ``q_proj_weight`` beside them), each with the
    (type, reason) of its SkippedLayer: quantize(state_dict) and quantize_checkpoint keep
    them float, so the result loads back into the float architecture."""
    keys = set(keys)
    out = {}
    for key in keys:
        if key == "out_proj.weight" or key.endswith(".out_proj.weight"):
            prefix = key[: -len("out_proj.weight")]
            if f"{prefix}in_proj_weight" in keys or f"{prefix}q_proj_weight" in keys:
                out[key] = ("NonDynamicallyQuantizableLinear", ATTENTION_OUT_PROJ_REASON)
    return out
