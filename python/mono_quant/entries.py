"""Quantizing one weight, and one state_dict entry, as ``quantize()`` does.

The layer below both :mod:`mono_quant.api` (``quantize()`` of a model or of a
state_dict) and :mod:`mono_quant.io` (``quantize_checkpoint()`` streams a
checkpoint entry by entry), so both give tensor for tensor the same output.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Tuple

import torch

from .config import QuantConfig
from .errors import NonFiniteWeightError
from .formats import get_format
from .narrow import narrow_reason
from .orig_dtype import ORIG_DTYPES
from .packing import can_pack, pack_int8_linear, quantize_and_pack_int8
from .qtypes import QType, get_qtype
from .report import LayerReport, SkippedLayer, storage_view, tensor_bytes
from .selection import selection_reason, too_small_reason
from .tensor import QuantizedWeight, no_data_reason, sqnr_db

__all__ = ["convert_weight", "state_dict_entry_plan", "packs_straight_to_int8", "nonfinite_entry_error",
           "nonfinite_layer_error", "nonfinite_skip_reason", "float32_overflow",
           "quantize_state_dict_entry", "finish_entry"]


def convert_weight(w: torch.Tensor, qtype: QType, cfg: QuantConfig, layer_type: str, cache: dict,
                   measure_error: bool = True):
    """The stored form of a weight (QuantizedWeight or a cast tensor) and its SQNR
    (NaN when not ``measure_error``: saves a pass and, for casts, full-size temporaries).
    A weight shared by several layers (tied) is converted once, so they share storage.
    Raises NonFiniteWeightError (without a layer name) for NaN/Inf."""
    key = (id(w), qtype.name)
    if key in cache:
        return cache[key]
    result = get_format(qtype).convert(w, cfg, layer_type, measure_error)
    cache[key] = result
    return result


#: the entries a layer stores in place of its ``weight`` (the one of each set shaped as the weight):
#: quantize(state_dict) lists such a layer in ``skipped`` (it was left float silently)
_WEIGHT_STAND_INS = (
    ("weight_orig", "a pruned weight (torch.nn.utils.prune's weight_orig and weight_mask)",
     "prune.remove(module, 'weight')"),
    ("weight_v", "a weight-normed weight (torch.nn.utils.weight_norm's weight_g and weight_v)",
     "torch.nn.utils.remove_weight_norm(module)"),
    ("parametrizations.weight.original", "a parametrized weight (torch.nn.utils.parametrize)",
     "parametrize.remove_parametrizations(module, 'weight')"),
    ("parametrizations.weight.original1", "a parametrized weight (torch.nn.utils.parametrize)",
     "parametrize.remove_parametrizations(module, 'weight')"))


def state_dict_entry_plan(key: str, tensor: torch.Tensor, cfg: QuantConfig):
    """What ``quantize(state_dict)`` does with one entry: None when it is copied as it is
    (not a 2-D to 4-D ``*.weight``: a norm's, a bias), else ``(layer name, "Linear", "Conv1d"
    or "Conv2d" (guessed from the rank), reason)`` with ``reason`` None when the weight is to be
    quantized, else why it stays float: a 3-D weight (a Conv1d's: a state_dict alone does not say
    what holds it) and an integer one are listed, as quantize(model) lists what it leaves."""
    is_weight = key == "weight" or key.endswith(".weight")
    stand_in = next((entry for entry in _WEIGHT_STAND_INS if key == entry[0] or key.endswith("." + entry[0])), None)
    if stand_in is not None and tensor.dim() in (2, 3, 4):  # listed, never left float silently
        suffix, what, remedy = stand_in
        return key[: -len(suffix)].rstrip("."), {2: "Linear", 3: "Conv1d", 4: "Conv2d"}[tensor.dim()], (
            f"{what}: the state_dict holds no plain weight; make it one before state_dict() ({remedy}) or "
            f"quantize the model")
    if not (is_weight and tensor.dim() in (2, 3, 4)):
        return None
    name = key[: -len("weight")].rstrip(".")
    kind = {2: "Linear", 3: "Conv1d", 4: "Conv2d"}[tensor.dim()]
    if key != "weight" and (key.startswith(".") or ".." in key):  # no module has an empty name part
        return name, kind, f"{key!r} has an empty name part: no module could hold it (a renamed key?)"
    if not tensor.is_floating_point():
        dtype = str(tensor.dtype).replace("torch.", "")
        return name, kind, f"not a float weight ({dtype}): only float weights are quantized"
    if tensor.dim() == 3:
        return name, kind, ("a 3-D weight: quantize the model to quantize its Conv1d layers (a state_dict alone "
                            "does not say what holds it)")
    reason = selection_reason(cfg, [name], None) or no_data_reason(tensor)
    if reason is None:
        reason = too_small_reason(tensor.numel(), cfg)
    if reason is None and kind == "Linear":
        reason = narrow_reason(cfg, [name], tensor.shape, tensor.dtype)
    return name, kind, reason


def packs_straight_to_int8(tensor: torch.Tensor, cfg: QuantConfig) -> bool:
    """Whether a selected weight is quantized straight into the packed int8 layout
    (per-channel int8 of a 2-D CPU weight: what QuantizedLinear keeps)."""
    return get_format(cfg.dtype).packs_straight(tensor, cfg)


def nonfinite_entry_error(key: str, name: str, row: int, what: str = "NaN or Inf") -> NonFiniteWeightError:
    """The error for a state_dict weight holding NaN/Inf under ``nonfinite="error"``."""
    return NonFiniteWeightError(f"tensor {key!r} has {what} (output channel {row}): fix it, "
                                f"exclude it (exclude=[{name!r}]) or pass nonfinite='skip'", row, name, what)


def nonfinite_layer_error(name: str, kind: str, row: int, what: str = "NaN or Inf") -> NonFiniteWeightError:
    """The error for a model layer whose weight holds NaN/Inf under ``nonfinite="error"``."""
    return NonFiniteWeightError(f"layer {name or '<root>'!r} ({kind}) has {what} in its weight (output channel {row}): "
                                f"fix the weights, exclude the layer (exclude=[{name!r}]) or pass nonfinite='skip'",
                                row, name, what)


def float32_overflow(exc: NonFiniteWeightError, weight: torch.Tensor) -> NonFiniteWeightError:
    """``exc``, or, when the row it names is finite in ``weight`` (a float64 weight beyond float32's
    range: the kernels quantize through float32, where it became Inf), the same error saying so."""
    if exc.what != "NaN or Inf" or weight.dtype != torch.float64 or not 0 <= exc.row < weight.shape[0]:
        return exc
    row = weight[exc.row].detach()
    if not bool(torch.isfinite(row).all()):
        return exc
    what = f"values beyond float32's range (|w| up to {float(row.abs().max()):.4g}; quantized through float32)"
    return NonFiniteWeightError(f"weight holds {what} in channel {exc.row} (axis 0)", exc.row, exc.layer, what)


def nonfinite_skip_reason(exc: NonFiniteWeightError) -> str:
    """The ``skipped`` reason of a layer left float under ``nonfinite="skip"``."""
    if exc.what == "NaN or Inf":
        return f"non-finite weights (NaN/Inf in channel {exc.row})"
    return f"not representable in the target format: {exc.what} in channel {exc.row}"


def quantize_state_dict_entry(key: str, tensor: torch.Tensor, cfg: QuantConfig, cache: Optional[dict] = None,
                              *, measure_error: bool = True, copy: bool = True):
    """Quantize one state_dict entry as ``quantize(state_dict)`` does.

    Returns ``(tensors, layer_report, skipped)``: the output entries (the
    quantized buffers under the layer's prefix, or a clone of the input under
    ``key``), a LayerReport when it was quantized, a SkippedLayer when a
    weight was left float.  Used entry by entry by the state_dict path and by
    streaming checkpoint quantization, so both give identical tensors.
    ``measure_error=False`` skips the SQNR (reported as NaN); tensors are the same.
    ``copy=False`` returns entries left as they are without cloning them (a
    streaming writer only reads them).
    """
    keep = (lambda t: t.detach().clone()) if copy else (lambda t: t.detach())
    plan = state_dict_entry_plan(key, tensor, cfg)
    if plan is None:
        return {key: keep(tensor)}, None, None
    name, kind, reason = plan
    if reason is not None:
        return {key: keep(tensor)}, None, SkippedLayer(name, kind, reason)
    qtype = get_qtype(cfg.dtype)
    prefix = key[: -len("weight")]
    cached = None if cache is None else cache.get((_tie_key(tensor), qtype.name, "entry"))
    if cached is not None:  # a tensor stored under several keys: same outputs, shared
        suffixes, sqnr = cached
        return finish_entry({prefix + s: t for s, t in suffixes.items()}, key, name, kind, qtype, tensor, sqnr, None)
    try:
        out, sqnr = _quantize_entry(prefix, key, tensor, cfg, qtype, kind, measure_error)
    except NonFiniteWeightError as exc:
        exc = float32_overflow(exc, tensor)
        if cfg.nonfinite == "error":
            raise nonfinite_entry_error(key, name, exc.row, exc.what) from None
        return {key: keep(tensor)}, None, SkippedLayer(name, kind, nonfinite_skip_reason(exc))
    return finish_entry(out, key, name, kind, qtype, tensor, sqnr, cache)


def _tie_key(tensor: torch.Tensor):
    """The same for entries holding the very same tensor: one object, or tied (one storage, same view,
    as torch.load gives a tied state_dict's names); the caller's state_dict keeps them all alive."""
    if tensor.device.type == "meta" or tensor.numel() == 0:
        return id(tensor)
    return storage_view(tensor)[1]


def _quantize_entry(prefix: str, key: str, tensor: torch.Tensor, cfg: QuantConfig, qtype: QType, kind: str,
                    measure_error: bool) -> Tuple[Dict[str, torch.Tensor], float]:
    """The output entries of a selected weight and its SQNR."""
    if packs_straight_to_int8(tensor, cfg):
        # straight into the packed layout, block by block: what the module path stores,
        # without a whole plain int8 copy beside the packed one
        qmin, qmax = qtype.qrange(cfg.symmetric_for(kind))
        scale, zero_point, packed, sx, se = quantize_and_pack_int8(
            tensor, qmin, qmax, cfg.symmetric_for(kind), measure_error)
        sqnr = sqnr_db(sx, se) if measure_error else math.nan
        return {prefix + "weight_scale": scale, prefix + "weight_zero_point": zero_point,
                **{prefix + n: t for n, t in packed.items()}}, sqnr
    stored, sqnr = convert_weight(tensor, qtype, cfg, kind, {}, measure_error)
    if not isinstance(stored, QuantizedWeight):
        return {key: stored}, sqnr
    out = {prefix + "weight_scale": stored.scale, prefix + "weight_zero_point": stored.zero_point}
    if tensor.dim() == 2 and can_pack(stored):  # the same buffers QuantizedLinear.from_float keeps
        out.update({prefix + n: t for n, t in pack_int8_linear(stored).items()})
    else:
        out = {prefix + "weight_qdata": stored.qdata, **out}
    return out, sqnr


def finish_entry(out: Mapping[str, torch.Tensor], key: str, name: str, kind: str, qtype: QType,
                 tensor: torch.Tensor, sqnr: float, cache: Optional[dict]):
    """Remember a quantized entry (tied tensors) and report it: ``(out, LayerReport, None)``."""
    prefix = key[: -len("weight")]
    if cache is not None:
        cache[(_tie_key(tensor), qtype.name, "entry")] = ({k[len(prefix):]: t for k, t in out.items()}, sqnr)
    after = sum(tensor_bytes(t) for t in out.values())
    # a float8 weight stands for float32 in the layer, but says nothing of the model's dtype: not recorded
    orig = str(tensor.dtype).replace("torch.", "") if tensor.dtype in ORIG_DTYPES else None
    return out, LayerReport(name, kind, qtype.name, tuple(tensor.shape), tensor_bytes(tensor), after, sqnr, orig), None
