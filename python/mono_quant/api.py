"""quantize(): the model-level verb.

It never modifies the caller's model or tensors.  The quantized copy is built
with ``copy.deepcopy`` whose memo already maps every layer to be replaced to
its quantized module, so the float weights being replaced are never copied:
peak memory stays near original + quantized.
"""
from __future__ import annotations

import copy
import fnmatch
import math
import sys
from collections import OrderedDict
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .config import QuantConfig, resolve_config
from .modules import QuantizedLinear, QuantizedModule, qmodule_for
from .modules.registry import QMODULES
from .packing import PACKED_BUFFERS, can_pack, pack_int8_linear, quantize_and_pack_int8
from .qtypes import QType, get_qtype
from .report import LayerReport, Report, SkippedLayer, tensor_bytes, unique_tensor_bytes
from .tensor import NonFiniteWeightError, QuantizedWeight, quantize_int_with_error, sqnr_db

__all__ = ["quantize", "QuantizationResult", "SkippedLayer"]

# activations=None (weight-only) and group_size=None (per-channel int4) are meaningful, so "not given"
# needs its own marker
_UNSET = object()


class QuantizationResult:
    """What ``quantize()`` returns.  Unpacks as ``(model, skipped)`` (a
    quantized state_dict in place of the model when a state_dict went in);
    also carries ``.report``, ``.config`` and ``.state_dict()``."""

    def __init__(self, model: Optional[nn.Module], skipped: List[SkippedLayer], report: Report,
                 config: QuantConfig, state_dict: Optional[Dict[str, torch.Tensor]] = None):
        self.model = model
        self.skipped = skipped
        self.report = report
        self.config = config
        self._state_dict = state_dict

    def __iter__(self):
        yield self.model if self.model is not None else self._state_dict
        yield self.skipped

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index):
        return tuple(self)[index]

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The quantized tensors by name (the model's state_dict, or the quantized state_dict)."""
        return self.model.state_dict() if self.model is not None else self._state_dict

    def __repr__(self) -> str:
        what = type(self.model).__name__ if self.model is not None else "state_dict"
        return (f"QuantizationResult({what}, dtype={self.config.dtype}, "
                f"{len(self.report.layers)} quantized, {len(self.skipped)} skipped)")




def check_group_size_given(cfg: QuantConfig, given: bool) -> None:
    """A group_size passed explicitly with a format that has no groups is a mistake: say so."""
    if given and cfg.dtype != "int4":
        raise ValueError(f"group_size applies to dtype 'int4' only; {cfg.dtype} is quantized per channel "
                         "(granularity='per_channel') or per tensor")


def quantize(
    model_or_state_dict,
    dtype=None,
    *,
    symmetric: Optional[bool] = None,
    granularity: Optional[str] = None,
    include=None,
    exclude=None,
    min_weight_numel: Optional[int] = None,
    nonfinite: Optional[str] = None,
    activations=_UNSET,
    group_size=_UNSET,
    method: Optional[str] = None,
    embeddings: Optional[bool] = None,
    config=None,
    model: Optional[nn.Module] = None,
    progress: bool = False,
) -> QuantizationResult:
    """Quantize every Linear and Conv2d of a model (or the 2-D/4-D ``*.weight``
    tensors of a state_dict) to ``dtype``.

    ``dtype``: "int8" (default), "uint8", "fp16", "bf16" or the torch dtype.
    ``symmetric``: None uses the scheme's default (int8: symmetric -127..127).
    ``granularity``: "per_channel" (default) or "per_tensor".
    ``include`` / ``exclude``: module-name globs or module types (exclude wins).
    ``min_weight_numel``: smaller layers stay float.  ``nonfinite``: "error"
    (default) raises on NaN/Inf weights naming the layer; "skip" leaves it float.
    ``activations``: for int8, "dynamic" (default: each call quantizes the
    input per row to int8 and multiplies in integers) or None (weight-only:
    float input times the int8 weight).
    ``config``: a QuantConfig or a TOML path; unset, ``mono_quant.toml`` or
    ``[tool.mono-quant]`` in ``pyproject.toml`` of the working directory is
    used.  Arguments win over the file, the file over defaults.
    ``group_size`` (int4): columns per group along the input dimension (default
    128; a multiple of 32; None for per-channel); rows are zero-padded to a
    multiple of 32 columns, so a layer's last group may be shorter.  ``method`` (int4): "rtn",
    "mse" (default) or "hqq" (see ``mono_quant.int4``).  ``embeddings``: also
    quantize nn.Embedding tables (off by default; lookups dequantize only the
    rows they read).
    ``model``: with a state_dict, an instance (possibly on ``meta``) of the
    architecture to build the quantized model from.

    Returns a :class:`QuantizationResult` that unpacks as ``(model, skipped)``.
    Raises ``TypeError`` for an input that is neither an ``nn.Module`` nor a
    mapping of tensors, ``ValueError`` for unknown dtypes or options and for
    NaN/Inf weights (with ``nonfinite="error"``).
    """
    cfg = resolve_config(config, dtype=dtype, symmetric=symmetric, granularity=granularity, include=include,
                         exclude=exclude, min_weight_numel=min_weight_numel, nonfinite=nonfinite,
                         activations=None if activations is _UNSET else ("none" if activations is None else activations),
                         group_size=None if group_size is _UNSET else (0 if group_size is None else group_size),
                         method=method, embeddings=embeddings)
    check_group_size_given(cfg, group_size is not _UNSET)
    if isinstance(model_or_state_dict, nn.Module):
        if model is not None:
            raise TypeError("model= is only for a state_dict input; the module given is the model")
        return _quantize_module(model_or_state_dict, cfg, progress)
    if isinstance(model_or_state_dict, Mapping):
        _check_state_dict(model_or_state_dict)
        if model is not None:
            if not isinstance(model, nn.Module):
                raise TypeError(f"model= must be an nn.Module instance of the architecture, got {type(model).__name__}")
            return _quantize_module(model, cfg, progress, weights=model_or_state_dict)
        return _quantize_state_dict(model_or_state_dict, cfg, progress)
    raise TypeError(
        f"quantize() takes a torch.nn.Module or a state_dict (a mapping of names to tensors), "
        f"got {type(model_or_state_dict).__name__}"
    )


# ---- selection --------------------------------------------------------------------------------


def _matches(patterns: Iterable, names: List[str], module: Optional[nn.Module]):
    """The first pattern (glob on any of the names, or a type) that matches, else None."""
    for p in patterns:
        if isinstance(p, str):
            if any(fnmatch.fnmatchcase(n, p) for n in names):
                return p
        elif isinstance(p, type):
            if module is not None and isinstance(module, p):
                return p
        else:
            raise TypeError(f"include/exclude entries must be name globs (str) or module types, got {p!r}")
    return None


def _selection_reason(cfg: QuantConfig, names: List[str], module: Optional[nn.Module]) -> Optional[str]:
    """Why a supported layer is not selected, or None when it is."""
    if cfg.exclude:
        hit = _matches(cfg.exclude, names, module)
        if hit is not None:
            return f"excluded by exclude={_pattern_repr(hit)}"
    if cfg.include:
        if _matches(cfg.include, names, module) is None:
            return "not matched by include"
    return None


def _pattern_repr(p) -> str:
    return repr(p) if isinstance(p, str) else p.__name__


def _unsupported_reason(module: nn.Module) -> Optional[str]:
    """A reason to list a weight-bearing module we don't replace; None for modules
    without a matrix weight (norms, activations, containers)."""
    params = list(module.parameters(recurse=False))
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in params):
        return "uninitialized lazy module (run a forward pass first)"
    has_matrix = any(p.dim() >= 2 for p in params)
    if not has_matrix:
        return None
    for float_type in QMODULES:
        if isinstance(module, float_type):
            return (f"subclass {type(module).__name__} of {float_type.__name__} may have its own forward "
                    f"or be read directly by its parent; only exact {float_type.__name__} is replaced")
    supported = ", ".join(t.__name__ for t in QMODULES)
    return f"unsupported type (mono-quant replaces {supported})"


# ---- module path ------------------------------------------------------------------------------


def _quantize_module(model: nn.Module, cfg: QuantConfig, progress: bool, weights: Optional[Mapping] = None):
    qtype = get_qtype(cfg.dtype)
    names_of: Dict[int, List[str]] = {}
    modules: Dict[int, nn.Module] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(m), []).append(name)
        modules[id(m)] = m

    skipped: List[SkippedLayer] = []
    targets: List[Tuple[str, nn.Module]] = []
    for key, m in modules.items():
        names = names_of[key]
        name = names[0]
        cls = qmodule_for(m)
        if cls is None:
            reason = _unsupported_reason(m) if not isinstance(m, QuantizedModule) else None
            if reason:
                skipped.append(SkippedLayer(name, type(m).__name__, reason))
            continue
        reason = _selection_reason(cfg, names, m)
        if reason is None and type(m) is nn.Embedding:
            if not cfg.embeddings:
                reason = "embedding tables are quantized only with embeddings=True"
            elif m.max_norm is not None:
                reason = "embedding with max_norm renormalizes its float rows on lookup"
        if reason is None:
            reason = _shape_reason(m, cfg, weights, name)
        if reason is None and weights is not None:
            _check_shared_entries(weights, names)
        if reason:
            skipped.append(SkippedLayer(name, type(m).__name__, reason))
        else:
            targets.append((name, m))

    report = Report()
    memo: Dict[int, nn.Module] = {}
    quantized_names: List[str] = []
    weight_cache: Dict[Tuple[int, str], Tuple[object, float]] = {}
    # a packed module per tied weight: later layers share its buffers, and the
    # plain int8 copy is dropped as soon as the first is packed (peak memory)
    packed_by_weight: Dict[Tuple[int, str], Tuple[QuantizedModule, float]] = {}
    for i, (name, m) in enumerate(targets):
        if progress:
            print(f"[{i + 1}/{len(targets)}] {name or '<root>'}", file=sys.stderr, flush=True)
        w = weights[_key(name, "weight")] if weights is not None else m.weight
        has_bias = getattr(m, "bias", None) is not None  # nn.Embedding has no bias
        b = (weights.get(_key(name, "bias")) if weights is not None else m.bias) if has_bias else None
        key = (id(w), qtype.name)
        direct = None  # (scale, zero_point, packed buffers, symmetric): quantized straight into the packed layout
        try:
            if key in packed_by_weight:
                first, sqnr = packed_by_weight[key]
                stored = first.quantized_weight()
            elif type(m) is nn.Linear and key not in weight_cache and w.numel() > 0 and packs_straight_to_int8(w, cfg):
                symmetric = cfg.symmetric_for("Linear")
                qmin, qmax = qtype.qrange(symmetric)
                scale, zero_point, packed, sx, se = quantize_and_pack_int8(w, qmin, qmax, symmetric, True)
                direct, stored, sqnr = (scale, zero_point, packed, symmetric), None, sqnr_db(sx, se)
            else:
                stored, sqnr = _convert_weight(w, qtype, cfg, type(m).__name__, weight_cache)
        except NonFiniteWeightError as exc:
            if cfg.nonfinite == "error":
                raise ValueError(
                    f"layer {name or '<root>'!r} ({type(m).__name__}) has NaN or Inf in its weight "
                    f"(output channel {exc.row}): fix the weights, exclude the layer "
                    f"(exclude=[{name!r}]) or pass nonfinite='skip'"
                ) from None
            skipped.append(SkippedLayer(name, type(m).__name__, f"non-finite weights (NaN/Inf in channel {exc.row})"))
            continue
        if direct is not None:
            qm = QuantizedLinear.from_packed_int8(m, *direct, cfg.activations)
        else:
            qm = qmodule_for(m).from_float(m, stored)
            if hasattr(qm, "set_activations") and isinstance(stored, QuantizedWeight):
                qm.set_activations(cfg.activations)
        if weights is not None:
            qm._set_bias(b)
        if "weight_packed" in qm._buffers:
            if key in packed_by_weight:
                qm.set_packed({n: first._buffers[n] for n in PACKED_BUFFERS})
            else:
                packed_by_weight[key] = (qm, sqnr)
                weight_cache.pop(key, None)
        memo[id(m)] = qm
        quantized_names.extend(names_of[id(m)])  # every name of a shared module: its weights are done
        report.layers.append(LayerReport(
            name, type(m).__name__, qtype.name, tuple(w.shape),
            tensor_bytes(w) + tensor_bytes(b), qm.weight_nbytes() + tensor_bytes(qm.bias), sqnr,
        ))

    try:
        qmodel = copy.deepcopy(model, memo)
    except Exception as exc:  # a model holding something deepcopy refuses (locks, open files, ...)
        raise TypeError(
            f"quantize() copies the model so the original stays untouched, but {type(model).__name__} "
            f"cannot be deep-copied: {exc}"
        ) from exc
    if weights is not None:
        _load_remaining(qmodel, weights, set(quantized_names))

    report.skipped = skipped
    report.model_bytes_before = unique_tensor_bytes(model) if weights is None else sum(
        tensor_bytes(t) for t in weights.values() if isinstance(t, torch.Tensor))
    report.model_bytes_after = unique_tensor_bytes(qmodel)
    return QuantizationResult(qmodel, skipped, report, cfg)


def _key(name: str, suffix: str) -> str:
    return f"{name}.{suffix}" if name else suffix


def _check_shared_entries(weights: Mapping, names: List[str]) -> None:
    """A module the model shares under several names is quantized once, from its first
    name's entries: the state_dict's entries under the other names must hold the same values."""
    for alias in names[1:]:
        for suffix in ("weight", "bias"):
            first, other = weights.get(_key(names[0], suffix)), weights.get(_key(alias, suffix))
            if other is not None and first is not None and other is not first and not (
                    other.shape == first.shape and other.dtype == first.dtype and torch.equal(other, first)):
                raise ValueError(f"state_dict {_key(alias, suffix)!r} differs from {_key(names[0], suffix)!r}, "
                                 f"but the model shares one module under both names")


def _shape_reason(m: nn.Module, cfg: QuantConfig, weights: Optional[Mapping], name: str) -> Optional[str]:
    """Reasons a selected layer still can't be quantized: no data, too small."""
    if weights is not None:
        w = weights.get(_key(name, "weight"))
        if w is None:
            raise KeyError(f"state_dict has no {_key(name, 'weight')!r} for layer {name!r} of the model")
        if getattr(m, "bias", None) is not None and _key(name, "bias") not in weights:
            raise KeyError(f"state_dict has no {_key(name, 'bias')!r} for layer {name!r} of the model")
        if tuple(w.shape) != tuple(m.weight.shape):
            raise ValueError(f"state_dict {_key(name, 'weight')!r} has shape {tuple(w.shape)}, "
                             f"the model's layer expects {tuple(m.weight.shape)}")
    else:
        w = m.weight
        if isinstance(w, nn.parameter.UninitializedParameter):
            return "uninitialized lazy module (run a forward pass first)"
        if w.device.type == "meta":
            return "weight is on the meta device (no data to quantize)"
    if not w.is_floating_point():
        return f"weight dtype {w.dtype} is not floating point"
    if w.numel() < cfg.min_weight_numel:
        return f"too small: {w.numel()} weights < min_weight_numel={cfg.min_weight_numel}"
    return None


def _convert_weight(w: torch.Tensor, qtype: QType, cfg: QuantConfig, layer_type: str, cache: dict,
                    measure_error: bool = True):
    """The stored form of a weight (QuantizedWeight or a cast tensor) and its SQNR
    (NaN when not ``measure_error``: saves a pass and, for casts, full-size temporaries).
    A weight shared by several layers (tied) is converted once, so they share storage."""
    key = (id(w), qtype.name)
    if key in cache:
        return cache[key]
    if qtype.name == "int4":
        from .int4 import quantize_int4

        result = quantize_int4(w, group_size=cfg.group_size, symmetric=cfg.symmetric_for(layer_type),
                               method=cfg.method, with_error=True)
    elif qtype.kind == "int":
        axis = 0 if cfg.granularity == "per_channel" else None
        result = quantize_int_with_error(w, qtype, axis, cfg.symmetric_for(layer_type), with_error=measure_error)
        if not measure_error:
            result = (result[0], math.nan)
    else:
        bad = ~torch.isfinite(w.detach())
        if bool(bad.any()):
            raise NonFiniteWeightError("non-finite weight", int(bad.reshape(w.shape[0], -1).any(1).nonzero()[0]))
        cast = w.detach().to(qtype.storage)
        if cast.data_ptr() == w.data_ptr():  # already in that dtype: copy, never share the caller's tensor
            cast = cast.clone()
        if measure_error:
            err = (w.detach().float() - cast.float())
            result = (cast, sqnr_db(float(w.detach().float().pow(2).sum()), float(err.pow(2).sum())))
        else:
            result = (cast, math.nan)
    cache[key] = result
    return result


def _load_remaining(qmodel: nn.Module, weights: Mapping, quantized: set) -> None:
    """Load the state_dict entries of the layers left in float into the copy
    (assigning clones, so a meta-device skeleton works); the quantized layers
    already hold theirs.  Raises KeyError listing missing / unexpected keys."""

    def owner(key: str) -> str:
        return key.rsplit(".", 1)[0] if "." in key else ""

    expected = {k for k in qmodel.state_dict() if owner(k) not in quantized}
    rest = OrderedDict((k, v.detach().clone()) for k, v in weights.items() if owner(k) not in quantized)
    missing, unexpected = sorted(expected - set(rest)), sorted(set(rest) - expected)
    if missing or unexpected:
        raise KeyError(f"state_dict does not match the model: missing keys {missing[:10]}"
                       f"{'...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
                       f"{'...' if len(unexpected) > 10 else ''}")
    qmodel.load_state_dict(rest, strict=False, assign=True)


# ---- state_dict path --------------------------------------------------------------------------


def _check_state_dict(sd: Mapping) -> None:
    for k, v in sd.items():
        if not isinstance(k, str):
            raise TypeError(f"state_dict keys must be str, got {type(k).__name__} ({k!r})")
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"state_dict[{k!r}] must be a torch.Tensor, got {type(v).__name__}")


def state_dict_entry_plan(key: str, tensor: torch.Tensor, cfg: QuantConfig):
    """What ``quantize(state_dict)`` does with one entry: None when it is copied as it is
    (not a floating 2-D / 4-D ``*.weight``), else ``(layer name, "Linear" or "Conv2d",
    reason)`` with ``reason`` None when the weight is to be quantized, else why it stays float."""
    is_weight = key == "weight" or key.endswith(".weight")
    if not (is_weight and tensor.is_floating_point() and tensor.dim() in (2, 4)):
        return None
    name = key[: -len("weight")].rstrip(".")
    kind = "Linear" if tensor.dim() == 2 else "Conv2d"
    reason = _selection_reason(cfg, [name], None)
    if reason is None and tensor.numel() < cfg.min_weight_numel:
        reason = f"too small: {tensor.numel()} weights < min_weight_numel={cfg.min_weight_numel}"
    return name, kind, reason


def packs_straight_to_int8(tensor: torch.Tensor, cfg: QuantConfig) -> bool:
    """Whether a selected weight is quantized straight into the packed int8 layout
    (per-channel int8 of a 2-D CPU weight: what QuantizedLinear keeps)."""
    return get_qtype(cfg.dtype).name == "int8" and cfg.granularity == "per_channel" and tensor.dim() == 2 \
        and tensor.device.type == "cpu" and tensor.numel() > 0


def nonfinite_entry_error(key: str, name: str, row: int) -> ValueError:
    """The error for a state_dict weight holding NaN/Inf under ``nonfinite="error"``."""
    return ValueError(f"tensor {key!r} has NaN or Inf (output channel {row}): fix it, "
                      f"exclude it (exclude=[{name!r}]) or pass nonfinite='skip'")


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
    qtype = get_qtype(cfg.dtype)
    keep = (lambda t: t.detach().clone()) if copy else (lambda t: t.detach())
    plan = state_dict_entry_plan(key, tensor, cfg)
    if plan is None:
        return {key: keep(tensor)}, None, None
    name, kind, reason = plan
    if reason is None:
        cached = None if cache is None else cache.get((id(tensor), qtype.name, "entry"))
        if cached is not None:  # a tensor stored under several keys: same outputs, shared
            suffixes, sqnr = cached
            prefix = key[: -len("weight")]
            return _finish_entry({prefix + s: t for s, t in suffixes.items()}, key, name, kind, qtype, tensor, sqnr,
                                 None)
        try:
            if packs_straight_to_int8(tensor, cfg):
                # straight into the packed layout, block by block: what the module path stores,
                # without a whole plain int8 copy beside the packed one
                qmin, qmax = qtype.qrange(cfg.symmetric_for(kind))
                scale, zero_point, packed, sx, se = quantize_and_pack_int8(
                    tensor, qmin, qmax, cfg.symmetric_for(kind), measure_error)
                sqnr = sqnr_db(sx, se) if measure_error else math.nan
                prefix = key[: -len("weight")]
                out = {prefix + "weight_scale": scale, prefix + "weight_zero_point": zero_point,
                       **{prefix + n: t for n, t in packed.items()}}
                return _finish_entry(out, key, name, kind, qtype, tensor, sqnr, cache)
            stored, sqnr = _convert_weight(tensor, qtype, cfg, kind, {}, measure_error)
        except NonFiniteWeightError as exc:
            if cfg.nonfinite == "error":
                raise nonfinite_entry_error(key, name, exc.row) from None
            reason = f"non-finite weights (NaN/Inf in channel {exc.row})"
    if reason is not None:
        return {key: keep(tensor)}, None, SkippedLayer(name, kind, reason)
    prefix = key[: -len("weight")]
    if isinstance(stored, QuantizedWeight):
        out = {prefix + "weight_scale": stored.scale, prefix + "weight_zero_point": stored.zero_point}
        if tensor.dim() == 2 and can_pack(stored):  # the same buffers QuantizedLinear.from_float keeps
            out.update({prefix + name: t for name, t in pack_int8_linear(stored).items()})
        else:
            out = {prefix + "weight_qdata": stored.qdata, **out}
    else:
        out = {key: stored}
    return _finish_entry(out, key, name, kind, qtype, tensor, sqnr, cache)


def _finish_entry(out, key, name, kind, qtype, tensor, sqnr, cache):
    """Remember a quantized entry (tied tensors) and report it."""
    prefix = key[: -len("weight")]
    if cache is not None:
        cache[(id(tensor), qtype.name, "entry")] = ({k[len(prefix):]: t for k, t in out.items()}, sqnr)
    after = sum(tensor_bytes(t) for t in out.values())
    return out, LayerReport(name, kind, qtype.name, tuple(tensor.shape), tensor_bytes(tensor), after, sqnr), None


def _quantize_state_dict(sd: Mapping, cfg: QuantConfig, progress: bool) -> QuantizationResult:
    out: Dict[str, torch.Tensor] = OrderedDict()
    report = Report()
    cache: dict = {}
    keys = list(sd.keys())
    for i, key in enumerate(keys):
        if progress:
            print(f"[{i + 1}/{len(keys)}] {key}", file=sys.stderr, flush=True)
        tensors, layer, skip = quantize_state_dict_entry(key, sd[key], cfg, cache)
        out.update(tensors)
        if layer is not None:
            report.layers.append(layer)
        if skip is not None:
            report.skipped.append(skip)
    report.model_bytes_before = sum(tensor_bytes(t) for t in sd.values())
    report.model_bytes_after = sum(tensor_bytes(t) for t in out.values())
    return QuantizationResult(None, report.skipped, report, cfg, state_dict=out)
