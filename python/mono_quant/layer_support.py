"""Which layers quantize() can replace beyond the exact registered types, how
their weights are oriented for quantization, and why others stay float.

- A user's subclass of a supported type (``class MyLinear(nn.Linear)``) is
  replaced only when opted in by type: ``include=[MyLinear]`` (its own
  forward, if any, is then replaced by the quantized base type's).
- GPT-2's ``Conv1D`` stores its weight ``[in, out]`` and nn.Conv1d ``[out,
  in, k]``: the weight is quantized in the orientation of the module that
  replaces it (``[out, in]``; ``[out, in, 1, k]``), so scales are per output
  feature as for nn.Linear / nn.Conv2d.
- nn.LSTM, nn.GRU, nn.RNN and nn.MultiheadAttention hold several weight matrices: each
  is quantized as the Linear it is used as, inside QuantizedLSTM / QuantizedGRU /
  QuantizedRNN / QuantizedMultiheadAttention (:mod:`mono_quant.composites`); their submodules (MHA's
  ``out_proj``) are quantized with them, not listed as skipped.
- A Linear whose weight is tied to a layer left in float (GPT-2's ``lm_head``
  and ``wte`` without ``embeddings=True``) stays float with a warning: a
  quantized copy beside the float original would make the model larger.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Type

import torch
from torch import nn

from .warn_site import warn_at_caller
from .modules.conv1d import QuantizedConv1d, conv2d_weight_of
from .modules.gpt2_conv1d import QuantizedGPT2Conv1D, linear_weight_of
from .modules.composite import is_composite
from .modules.registry import QMODULES, QuantizedModule, qmodule_for
from .parametrized import parametrized_base
from .report import SkippedLayer

__all__ = ["qmodule_for_selected", "weight_to_quantize", "known_unsupported_reason", "lora_adapter_reason",
           "drop_tied_to_float", "warn_own_forwards", "TiedWeightWarning", "OwnForwardReplacedWarning"]


class OwnForwardReplacedWarning(UserWarning):
    """A subclass opted in by type (``include=[MyLinear]``) has a forward of its own, which the
    quantized base type's replaces: what it adds (a scale, an activation) no longer runs.
    What to do: exclude the class, or move the extra computation out of the layer.
    Import it from ``mono_quant.layer_support``.
    """


class TiedWeightWarning(UserWarning):
    """A layer stayed float because its weight is tied to a layer that stays float.

    Typical case: GPT-2's (or any tied) ``lm_head`` shares its weight with the
    input embedding, which stays float without ``embeddings=True``; a quantized
    copy beside the float table would make the model larger.  The layer is in
    ``skipped`` with the reason.  What to do: nothing, or pass
    ``embeddings=True`` to quantize the table and its tied head together.
    Import it from ``mono_quant.layer_support``.
    """


def qmodule_for_selected(module: nn.Module, cfg) -> Optional[Type[QuantizedModule]]:
    """The quantized class for ``module``: its exact type's, or, for a subclass of a
    supported type that ``cfg.include`` names by type (a class that is not itself a
    supported float type: ``include=[nn.Linear]`` does not opt in subclasses), the
    base type's.  nn.MultiheadAttention's ``out_proj`` is never opted in."""
    found = qmodule_for(module)
    if found is None and parametrized_base(module) in QMODULES:  # a parametrized weight (weight_norm, ...)
        found = QMODULES[parametrized_base(module)]
        return None if is_composite(found) else found
    if found is not None or not cfg.include or known_unsupported_reason(module) is not None:
        return found
    for pattern in cfg.include:
        if isinstance(pattern, type) and pattern not in QMODULES and isinstance(module, pattern):
            for float_type in type(module).__mro__[1:]:
                if float_type in QMODULES:
                    return QMODULES[float_type]
    return None


def warn_own_forwards(layers) -> None:
    """Warn (OwnForwardReplacedWarning, once per class) for each subclass among the selected ``layers``
    that has a forward of its own, which its quantized base type's replaces (its extra code, a scale
    or an activation, silently stopped running), at the user's line."""
    seen = set()
    for module in layers:
        cls = type(module)
        float_type = next((t for t in cls.__mro__[1:] if t in QMODULES), None)
        if cls in QMODULES or cls in seen or float_type is None or parametrized_base(module) is not None:
            continue
        seen.add(cls)
        if cls.forward is not float_type.forward:
            warn_at_caller(f"include=[{cls.__name__}] replaces {cls.__name__} layers by {QMODULES[float_type].__name__}, "
                           f"which computes {float_type.__name__}.forward: {cls.__name__}'s own forward no longer "
                           f"runs (exclude the class, or move its extra computation out of the layer)",
                           OwnForwardReplacedWarning)


def weight_to_quantize(module: nn.Module, weight: torch.Tensor, qcls, keep: dict) -> torch.Tensor:
    """``weight`` in the orientation ``qcls`` stores.  A view made here is kept in ``keep``
    (the caller's per-call cache) so one weight always gives the same view object (tied
    layers share their quantized weight by the view's id, which must not be reused)."""
    if qcls is QuantizedGPT2Conv1D:
        make = linear_weight_of
    elif qcls is QuantizedConv1d:
        make = conv2d_weight_of
    else:
        return weight
    key = ("oriented view", id(weight), qcls.__name__)
    if key not in keep:
        keep[key] = (make(module, weight) if make is linear_weight_of else make(weight), weight)
    return keep[key][0]


_RNN_REASON = ("subclasses of nn.LSTM / nn.GRU / nn.RNN (and of nn.RNNBase) may have their own forward or cell and "
               "are not quantized, not even by include=[...]; only exact nn.LSTM, nn.GRU and nn.RNN are (by "
               "QuantizedLSTM / QuantizedGRU / QuantizedRNN): kept float")


def known_unsupported_reason(module: nn.Module) -> Optional[str]:
    """Why a weight-bearing layer of a well-known type stays float, or None."""
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return ("out_proj of nn.MultiheadAttention: quantized only with its nn.MultiheadAttention as a whole "
                "(its forward reads the weight directly), which stays float here: kept float")
    if isinstance(module, nn.MultiheadAttention):
        return (f"subclass {type(module).__name__} of nn.MultiheadAttention may have its own forward; only exact "
                f"nn.MultiheadAttention is replaced (by QuantizedMultiheadAttention): kept float")
    if isinstance(module, nn.RNNBase):
        return _RNN_REASON
    return None


# PEFT keeps each adapter's layers in ModuleDicts keyed by the adapter's name: a LoRA layer's
# "lora_A.<adapter>" / "lora_B.<adapter>", and the trainable copy of a modules_to_save layer
# (and everything inside it) under "modules_to_save.<adapter>"
_LORA_DICTS = ("lora_A", "lora_B")


def _peft_trainable(name: str) -> Optional[str]:
    parts = name.split(".")
    if len(parts) >= 2 and parts[-2] in _LORA_DICTS:
        return "a PEFT LoRA adapter"
    if "modules_to_save" in parts[:-1]:
        return "a PEFT modules_to_save copy (trained in full)"
    return None


def lora_adapter_reason(names: List[str]) -> Optional[str]:
    """Why a layer PEFT trains stays float (``...q_proj.lora_A.default``, ``head.modules_to_save.default``),
    or None.  Quantized, it would be frozen: training would silently stop updating it."""
    for name in names:
        what = _peft_trainable(name)
        if what:
            return (f"{what}: kept float so that it trains (a quantized layer is frozen); to quantize it once "
                    f"trained, merge the adapter into the float model (PeftModel.from_pretrained(float_model, "
                    f"'adapter').merge_and_unload()), then quantize the merged model")
    return None


def drop_tied_to_float(targets: List[Tuple[str, nn.Module]], skipped: List[SkippedLayer],
                       modules: Dict[int, nn.Module], names_of: Dict[int, List[str]]) -> List[Tuple[str, nn.Module]]:
    """``targets`` less the layers whose weight is also a parameter of a module that stays
    float (each added to ``skipped``, and one TiedWeightWarning for them all)."""
    chosen = {id(m) for _, m in targets}
    float_owner: Dict[int, Tuple[str, nn.Module]] = {}
    for key, m in modules.items():
        if key not in chosen:
            for p in m.parameters(recurse=False):
                float_owner.setdefault(id(p), (names_of[key][0], m))
    kept, dropped = [], []
    for name, m in targets:
        weight = None if parametrized_base(m) is not None else getattr(m, "weight", None)  # (never computed here)
        owner = float_owner.get(id(weight)) if isinstance(weight, torch.Tensor) else None
        if owner is None:
            kept.append((name, m))
            continue
        dropped.append(name)
        skipped.append(SkippedLayer(name, type(m).__name__,
                                    f"weight tied to {owner[0]!r} ({type(owner[1]).__name__}), which stays float: "
                                    f"a quantized copy would make the model larger (quantize both, e.g. with "
                                    f"embeddings=True, to quantize it)"))
    if dropped:
        warn_at_caller(f"{len(dropped)} layer(s) kept float because their weight is tied to a layer that stays "
                       f"float ({', '.join(repr(d) for d in dropped[:5])}); see the skipped list",
                       TiedWeightWarning)
    return kept
