"""Mixed precision: quantize() of a model that already holds mono-quant layers.

``quantize(model, "int4", include=["*.mlp.*"])`` then ``quantize(result.model,
"int8")`` quantizes the layers the first call left float and leaves the
quantized ones as they are (as torchao's ``quantize_`` and optimum-quanto's
``quantize`` do): each is listed in ``skipped`` with its format.  A quantized
layer is never quantized again (its integer weight would be rounded twice: the
errors compound), so changing a layer's format means starting from the float
model.

A quantized layer is a :class:`QuantizedModule`, a :class:`QuantizedComposite`
(an LSTM / attention holding QuantizedLinear children) or a static int8 layer; everything
inside one belongs to it and is never selected on its own.
"""
from __future__ import annotations

from typing import Dict, List

from torch import nn

from .modules.composite import QuantizedComposite
from .modules.registry import QuantizedModule
from .report import SkippedLayer
from .selection import matching_include

__all__ = ["ALREADY_QUANTIZED", "quantized_layers", "inside_quantized", "already_quantized_skips",
           "all_already_quantized"]

#: how every already-quantized layer's skip reason starts (NothingQuantizedWarning tells them apart by it)
ALREADY_QUANTIZED = "already quantized"


def _is_quantized(m: nn.Module) -> bool:
    # a static int8 layer (static/modules.py, static/fallback.py) says so itself: static/ imports this module
    return isinstance(m, (QuantizedModule, QuantizedComposite)) or getattr(type(m), "static_int8_layer", False)


def quantized_layers(modules: Dict[int, nn.Module]) -> Dict[int, nn.Module]:
    """The quantized layers among ``modules`` (id -> module, as ``named_modules`` lists them),
    less those inside another one (a composite's QuantizedLinear children)."""
    inside = set()
    for m in modules.values():
        if _is_quantized(m):
            inside.update(id(sub) for sub in m.modules() if sub is not m)
    return {key: m for key, m in modules.items() if _is_quantized(m) and key not in inside}


def inside_quantized(modules: Dict[int, nn.Module]) -> set:
    """The ids of every module that is or belongs to a quantized layer."""
    found = set()
    for m in quantized_layers(modules).values():
        found.update(id(sub) for sub in m.modules())
    return found


def _format_of(m: nn.Module) -> str:
    """The weight format of a quantized layer (a composite: its children's, e.g. "int8" or "int4+int8")."""
    if isinstance(m, QuantizedModule):
        return m.weight_format
    if getattr(type(m), "static_int8_layer", False):
        return "static int8"
    formats = sorted({sub.weight_format for sub in m.modules() if isinstance(sub, QuantizedModule)})
    return "+".join(formats) or "a quantized format"


def already_quantized_skips(layers: Dict[int, nn.Module], names_of: Dict[int, List[str]],
                            cfg) -> Dict[int, SkippedLayer]:
    """A SkippedLayer per quantized layer (by id), saying its format and what to do; an ``include``
    entry that names it is quoted (the user asked for it, and it was not re-quantized)."""
    skipped = {}
    for key, m in layers.items():
        names = names_of[key]
        fmt = _format_of(m)
        asked = matching_include(cfg, names, m)
        why = f" (include=[{asked}] names it, but it is never quantized twice)" if asked is not None else ""
        skipped[key] = SkippedLayer(
            names[0], type(m).__name__,
            f"{ALREADY_QUANTIZED} as {fmt}{why}: kept as it is; to change its format, quantize the float model")
    return skipped


def all_already_quantized(skipped) -> bool:
    """Whether every skipped layer is one already quantized (and there is at least one)."""
    skipped = list(skipped)
    return bool(skipped) and all(s.reason.startswith(ALREADY_QUANTIZED) for s in skipped)
