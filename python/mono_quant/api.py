"""quantize(): the model-level verb.

It never modifies the caller's model or tensors.  The quantized copy is built
with ``copy.deepcopy`` whose memo already maps every layer to be replaced to
its quantized module, so the float weights being replaced are never copied:
peak memory stays near original + quantized.
"""
from __future__ import annotations

import contextlib
import copy
import sys
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from .compiled_models import compiled_inner, compiled_inputs, compiled_like
from .config import DEFAULT, QuantConfig, resolve_options
from .entries import (convert_weight, float32_overflow, nonfinite_layer_error, nonfinite_skip_reason,
                      packs_straight_to_int8, quantize_state_dict_entry)
from .errors import AlreadyQuantizedError, NonFiniteWeightError
from .modules import QuantizedLinear, QuantizedModule
from .modules.gpt2_conv1d import QuantizedGPT2Conv1D
from .narrow import narrow_reason
from .orig_dtype import orig_dtype_of
from .modules.registry import QMODULES
from .packing import PACKED_BUFFERS, quantize_and_pack_int8
from .qtypes import get_qtype
from .report import LayerReport, Report, SkippedLayer, tensor_bytes, unique_bytes, unique_tensor_bytes
from .result import QuantizationResult
from .composites import attention_out_proj_keys, children_of_composites, composite_skip_reason, quantize_composite
from .modules.composite import is_composite
from .module_hooks import carry_hooks, hook_computed_copies, tensor_in_use, weight_in_use
from .parametrized import parametrized_base, parametrized_reason, plain_float_layer, raw_weight
from .layer_support import (drop_tied_to_float, known_unsupported_reason, lora_adapter_reason, qmodule_for_selected,
                            warn_own_forwards, weight_to_quantize)
from .selection import selection_reason, too_small_reason
from .static import quantize_static
from .integrations.hf_layer_list import refresh_layer_list
from .integrations.hf_resize import guard_resize_token_embeddings
from .mixed import already_quantized_skips, inside_quantized, quantized_layers
from .strictness import (check_patterns_match, holder_names_of_keys, holders_and_others, layer_names_of_keys,
                         refuse_quantized_state_dict, warn_if_larger, warn_if_nothing_quantized)
from .tensor import QuantizedWeight, no_data_reason, sqnr_db

__all__ = ["quantize", "QuantizationResult", "SkippedLayer"]


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
    activations=DEFAULT,
    group_size=DEFAULT,
    method: Optional[str] = None,
    embeddings: Optional[bool] = None,
    reduce_range: Optional[bool] = None,
    config=None,
    model: Optional[nn.Module] = None,
    progress: bool = False,
    calibration=None, observer: Optional[str] = None, calibration_samples: Optional[int] = None,
) -> QuantizationResult:
    """Quantize every Linear and Conv2d of a model (or the 2-D/4-D ``*.weight``
    tensors of a state_dict) to ``dtype``.

    Also replaced: nn.Conv1d and GPT-2's ``Conv1D`` (as their 2-D
    equivalents), and nn.Embedding / nn.EmbeddingBag with ``embeddings=True``; every
    weight-bearing layer left float is in ``skipped`` with its reason
    (docs/huggingface.md has the coverage table).  The caller's model and tensors are never modified.  Options left as None
    (or ``DEFAULT``) take the config file's value, else the default in
    brackets; arguments win over the file, the file over defaults.

    Args:
        model_or_state_dict: An ``nn.Module``, or a mapping of names to tensors.
        dtype: "int8" (default), "uint8", "int4", "fp16", "bf16" or the torch dtype.
        symmetric: None uses the scheme's default (int8: symmetric, -127..127).
        granularity: "per_channel" (default) or "per_tensor".
        include: Module-name globs or module types to quantize (default: all).  An int8
            Linear too narrow for the packed layout (1-4 outputs in fp32, up to 8 in fp16 /
            bf16: it would grow) stays float unless named here exactly.
        exclude: Module-name globs or module types to leave in float (wins over ``include``).
        min_weight_numel: Layers with fewer weights stay float (default 0).
        nonfinite: "error" (default: raise on NaN/Inf weights, naming the
            layer) or "skip" (leave that layer in float).
        activations: For int8, "dynamic" (default: each call quantizes the
            input per row to int8 and multiplies in integers), "static"
            (calibrated fixed scales, int8 between layers; needs
            ``calibration``) or None (weight-only: float input times the int8 weight).
        group_size: int4 only: columns per group along the input dimension
            (default 128; a multiple of 32), or None for one group per output
            channel.  Rows are zero-padded to a multiple of 32 columns, so a
            layer's last group may be shorter.
        method: int4 only: "rtn", "mse" (default) or "hqq" (see ``mono_quant.int4``).
        embeddings: Also quantize ``nn.Embedding`` and ``nn.EmbeddingBag`` tables (default
            False; lookups dequantize only the rows they read).
        reduce_range: int8 with activations="dynamic" only (else ConfigError):
            quantize activations to 7 bits (0..127 per row, with a zero-point)
            instead of 8, as torch.ao's ``reduce_range`` (default False).  Faster
            on AVX2 CPUs without VNNI, about 2 dB less SQNR; bit-identical
            results on every CPU (docs/guide.md).
        config: A QuantConfig or a TOML path; None looks for ``mono_quant.toml``
            or ``[tool.mono-quant]`` in ``pyproject.toml`` of the working directory.
        model: With a state_dict, an instance (possibly on ``meta``) of the
            architecture to build the quantized model from.
        progress: Print one line per layer on stderr.
        calibration: activations="static": a tensor, a list / iterable /
            DataLoader of tensors, (x, y) tuples or dicts (``model(**batch)``),
            or a callable that runs the model (docs/static.md).
        observer: activations="static": "minmax" (default), "moving_average",
            "histogram", "percentile", "entropy" or "mse".
        calibration_samples: activations="static": use at most this many samples.

    Returns:
        A QuantizationResult that unpacks as ``(model, skipped)`` (a
        quantized state_dict in place of the model for a state_dict input
        without ``model``), with ``.report`` and ``.config``.

    Raises:
        TypeError: The input is neither an ``nn.Module`` nor a mapping of
            tensors, or the model cannot be deep-copied.
        ConfigError: An unknown dtype, an invalid option, or an ``include`` /
            ``exclude`` argument that matches no layer (a ``ValueError``).
        NonFiniteWeightError: A weight holds NaN/Inf with ``nonfinite="error"``
            (a ``ValueError``; ``.layer`` names the layer).
        AlreadyQuantizedError: The state_dict is already quantized by
            mono-quant, or ``model=`` holds quantized layers (a float
            state_dict fills the float architecture) (a ``ValueError``).  A
            model that holds quantized layers is fine: only its float layers
            are quantized, the others are listed in ``skipped`` (mixed
            precision, docs/guide.md).
        KeyError: A state_dict given with ``model=`` lacks a layer's entries.

    Warns:
        UnmatchedPatternWarning: An ``include`` / ``exclude`` entry from a
            config file matches no layer (given as an argument: ConfigError).
        NothingQuantizedWarning: No layer was quantized.
        TiedWeightWarning: A layer stayed float because its weight is tied to
            a layer that stays float (GPT-2's ``lm_head``).
        LargerModelWarning: The quantized model takes more bytes than the float one.

    Examples:
        >>> import mono_quant as mq
        >>> qmodel, skipped = mq.quantize(model, dtype="int8")
        >>> result = mq.quantize(model, dtype="int4", group_size=64, exclude=["lm_head"])
        >>> print(result.report)
    """
    # the result may be trained (adapters, autograd to the input): inference tensors would make its
    # first backward fail ("Inference tensors cannot be saved for backward"), far from here.  (In this
    # frame, not a second call: the warnings' stack levels name the caller's line.)
    with torch.inference_mode(False) if torch.is_inference_mode_enabled() else contextlib.nullcontext():
        cfg = resolve_options(config, dtype=dtype, symmetric=symmetric, granularity=granularity, include=include,
                              exclude=exclude, min_weight_numel=min_weight_numel, nonfinite=nonfinite,
                              activations=activations, group_size=group_size, method=method,
                              embeddings=embeddings, reduce_range=reduce_range)
        # torch.compile's wrapper: the model it wraps (its layers named as there), compiled back alike
        wrapper = next((m for m in (model_or_state_dict, model) if compiled_inner(m) is not None), None)
        if wrapper is not None:
            model_or_state_dict, model, cfg = compiled_inputs(model_or_state_dict, model, cfg)
        for given in (model_or_state_dict, model):
            if isinstance(given, torch.jit.ScriptModule):
                raise TypeError(
                    f"quantize() got a TorchScript module ({type(given).__name__}, from torch.jit.script / trace): "
                    f"its compiled code calls its own layers, which can't be replaced; quantize the eager model, "
                    f"then trace the quantized one (torch.jit.trace; torch.jit.script is refused by "
                    f"quantized layers) or use torch.compile / torch.export")
        # (each path called from this frame: the warnings' stack levels count on it)
        if cfg.activations == "static" or calibration is not None or observer is not None or calibration_samples:
            result = quantize_static(model_or_state_dict, cfg, calibration, observer, calibration_samples, progress)
        elif isinstance(model_or_state_dict, nn.Module):
            if model is not None:
                raise TypeError("model= is only for a state_dict input; the module given is the model")
            result = _quantize_module(model_or_state_dict, cfg, progress)
        elif isinstance(model_or_state_dict, Mapping):
            _check_state_dict(model_or_state_dict)
            refuse_quantized_state_dict(model_or_state_dict)
            if model is not None:
                if not isinstance(model, nn.Module):
                    raise TypeError(f"model= must be an nn.Module instance of the architecture, got "
                                    f"{type(model).__name__}")
                _refuse_quantized_skeleton(model)
                result = _quantize_module(model, cfg, progress, weights=model_or_state_dict)
            else:
                result = _quantize_state_dict(model_or_state_dict, cfg, progress)
        else:
            raise TypeError(f"quantize() takes a torch.nn.Module or a state_dict (a mapping of names to tensors), "
                            f"got {type(model_or_state_dict).__name__}")
        if wrapper is not None:
            result.model = compiled_like(wrapper, result.model)
        return result


def _refuse_quantized_skeleton(model: nn.Module) -> None:
    """A state_dict's float weights fill the float architecture: a ``model=`` holding quantized
    layers has no float weight to take them (they would be quantized twice, or dropped)."""
    modules = {id(m): m for m in model.modules()}
    held = quantized_layers(modules)
    if held:
        names = {id(m): n for n, m in model.named_modules()}
        shown = ", ".join(f"{names[k] or '<root>'!r} ({type(m).__name__})" for k, m in list(held.items())[:4])
        raise AlreadyQuantizedError(
            f"model= holds layers quantized already ({shown}{' ...' if len(held) > 4 else ''}): a state_dict is "
            f"quantized into the float architecture, which it fills entirely; pass model= an instance of the float "
            f"model (the meta device will do), or load the state_dict into the float model and quantize that "
            f"model (mixed precision: quantize the partly quantized model itself, without a state_dict)")


# ---- selection -------------------------------------------------------------------------------


def _unsupported_reason(module: nn.Module) -> Optional[str]:
    """A reason to list a weight-bearing module we don't replace; None for modules
    without a matrix weight (norms, activations, containers)."""
    if isinstance(module, parametrize.ParametrizationList):
        return None  # its owner is the layer (listed, with its reason, or quantized)
    if isinstance(module, torch.jit.ScriptModule) and any(p.dim() >= 2 for p in module.parameters(recurse=False)):
        return ("TorchScript module (torch.jit.script / trace): its compiled code calls its own layers, which "
                "can't be replaced; quantize the eager model, then script it")
    if parametrize.is_parametrized(module):
        return parametrized_reason(module)
    params = list(module.parameters(recurse=False))
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in params):
        return "uninitialized lazy module (run a forward pass first)"
    has_matrix = any(p.dim() >= 2 for p in params)
    if not has_matrix:
        return None
    known = known_unsupported_reason(module)
    if known is not None:
        return known
    for float_type in QMODULES:
        if isinstance(module, float_type):
            return (f"subclass {type(module).__name__} of {float_type.__name__} may have its own forward "
                    f"or be read directly by its parent; only exact {float_type.__name__} is replaced "
                    f"(opt it in by type: include=[{type(module).__name__}])")
    supported = ", ".join(t.__name__ for t in QMODULES)
    return f"unsupported type (mono-quant replaces {supported})"


# ---- module path ------------------------------------------------------------------------------


def _is_layer(module: nn.Module) -> bool:
    """A module include / exclude select: a type mono-quant replaces, or one with its own matrix weight."""
    return isinstance(module, tuple(QMODULES)) or any(
        not isinstance(p, nn.parameter.UninitializedParameter) and p.dim() >= 2
        for p in module.parameters(recurse=False))


def _quantize_module(model: nn.Module, cfg: QuantConfig, progress: bool, weights: Optional[Mapping] = None):
    """The model path: quantize the selected layers (weights from ``weights`` when given), then
    deep-copy the model around them."""
    names_of: Dict[int, List[str]] = {}
    modules: Dict[int, nn.Module] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(m), []).append(name)
        modules[id(m)] = m
    # layers quantized by an earlier call stay as they are (mixed precision: mixed.py); what is
    # inside one (a composite's children) counts as a layer for include / exclude, never as a holder
    held = inside_quantized(modules)
    layers = {key for key, m in modules.items() if key in held or _is_layer(m)}  # (a block only holds layers)
    layer_names = [n for key in layers for n in names_of[key]]
    check_patterns_match(cfg, layer_names, [modules[key] for key in layers], *holders_and_others(
        layer_names, [(n, m) for key, m in modules.items() if key not in layers for n in names_of[key]]))
    already = already_quantized_skips(quantized_layers(modules), names_of, cfg)
    targets, skipped = _select_targets(modules, names_of, cfg, weights, held, already)
    skipped = children_of_composites(targets, skipped, lambda m: qmodule_for_selected(m, cfg))
    targets = drop_tied_to_float(targets, skipped, modules, names_of)
    warn_own_forwards([m for _, m in targets])
    layers = _LayerQuantizer(cfg, weights)
    for i, (name, m) in enumerate(targets):
        if progress:
            print(f"[{i + 1}/{len(targets)}] {name or '<root>'}", file=sys.stderr, flush=True)
        skip = layers.quantize(name, m, names_of[id(m)])
        if skip is not None:
            skipped.append(skip)
    for key, qm in layers.memo.items():
        carry_hooks(modules[key], qm)
    qmodel = _copy_around(model, layers.memo)
    refresh_layer_list(qmodel, cfg.dtype)  # a Hugging Face model: save_pretrained writes every quantized layer
    guard_resize_token_embeddings(qmodel)  # (a quantized head: refused before transformers changes anything)
    if weights is not None:
        _load_remaining(qmodel, weights, set(layers.quantized_names))
    report = layers.report
    report.skipped = skipped
    report.model_bytes_before = unique_tensor_bytes(model) if weights is None else unique_bytes(
        t for t in weights.values() if isinstance(t, torch.Tensor))
    report.model_bytes_after = unique_tensor_bytes(qmodel)
    warn_if_nothing_quantized(report.layers, skipped)
    warn_if_larger(report)
    return QuantizationResult(qmodel, skipped, report, cfg)


def _select_targets(modules: Dict[int, nn.Module], names_of: Dict[int, List[str]], cfg: QuantConfig,
                    weights: Optional[Mapping], held: frozenset = frozenset(),
                    already: Optional[Dict[int, SkippedLayer]] = None
                    ) -> Tuple[List[Tuple[str, nn.Module]], List[SkippedLayer]]:
    """(name, module) of each layer to quantize, and the weight-bearing layers left float with why;
    the modules in ``held`` (quantized layers and their insides) are never selected, and each
    quantized layer is listed as ``already`` says."""
    skipped: List[SkippedLayer] = []
    targets: List[Tuple[str, nn.Module]] = []
    for key, m in modules.items():
        if key in held:
            if already and key in already:
                skipped.append(already[key])
            continue
        names = names_of[key]
        if qmodule_for_selected(m, cfg) is None:
            reason = _unsupported_reason(m) if not isinstance(m, QuantizedModule) else None
        else:
            reason = _skip_reason(m, names, cfg, weights)
            if reason is None:
                targets.append((names[0], m))
        if reason:
            skipped.append(SkippedLayer(names[0], type(m).__name__, reason))
    return targets, skipped


def _skip_reason(m: nn.Module, names: List[str], cfg: QuantConfig, weights: Optional[Mapping]) -> Optional[str]:
    """Why a supported layer stays float (not selected, an embedding without embeddings=True,
    no data, too small), or None to quantize it."""
    reason = selection_reason(cfg, names, m)
    if reason is None:
        reason = lora_adapter_reason(names)
    qcls = qmodule_for_selected(m, cfg)
    if reason is None and is_composite(qcls):  # several weights (LSTM, attention): their own checks
        return composite_skip_reason(qcls, m, cfg, weights)
    if reason is None and (parametrized_base(m) or type(m)) in (nn.Embedding, nn.EmbeddingBag):
        if not cfg.embeddings:
            reason = "embedding tables are quantized only with embeddings=True"
        elif m.max_norm is not None:
            reason = "embedding with max_norm renormalizes its float rows on lookup"
    if reason is None:
        reason = _shape_reason(m, cfg, weights, names[0])
    if reason is None:
        reason = _narrow_reason(m, cfg, weights, names)
    if reason is None and weights is not None:
        _check_shared_entries(weights, names)
    return reason


class _LayerQuantizer:
    """Quantizes the layers of one model one at a time, sharing the work for tied weights;
    collects the deepcopy memo (float layer -> quantized layer) and the report."""

    def __init__(self, cfg: QuantConfig, weights: Optional[Mapping]):
        self.cfg, self.weights, self.qtype = cfg, weights, get_qtype(cfg.dtype)
        self.report = Report()
        self.memo: Dict[int, nn.Module] = {}
        self.quantized_names: List[str] = []
        self.weight_cache: Dict[Tuple[int, str], Tuple[object, float]] = {}
        # a packed module per tied weight: later layers share its buffers, and the
        # plain int8 copy is dropped as soon as the first is packed (peak memory)
        self.packed_by_weight: Dict[Tuple[int, str], Tuple[QuantizedModule, float]] = {}
        # float bias -> (it, the quantized layers' copy): layers sharing a bias share the copy
        # (the float bias kept here, so that its id is not reused by a later one)
        self.bias_copies: Dict[int, Tuple[torch.Tensor, nn.Parameter]] = {}

    def quantize(self, name: str, m: nn.Module, names: List[str]) -> Optional[SkippedLayer]:
        """Quantize layer ``m`` (known by ``names``); a SkippedLayer when its weight is non-finite
        and ``nonfinite="skip"``."""
        qcls = qmodule_for_selected(m, self.cfg)
        if is_composite(qcls):
            return quantize_composite(self, name, m, names, qcls)
        if self.weights is not None:
            return self._quantize_layer(name, m, m, self.weights[_key(name, "weight")], names)
        plain = plain_float_layer(m)  # a parametrized weight: a plain copy holding the computed weight
        if plain is not None:
            reason = _declared_shape_reason(plain, plain.weight)  # (the weight the layer computes with)
            if reason is not None:
                return SkippedLayer(name, type(m).__name__, reason)
        src = m if plain is None else plain
        w = weight_in_use(src)  # (a weight-norm hook's weight, computed)
        if plain is None and w is m.weight:
            return self._quantize_layer(name, m, src, w, names)
        # A weight computed for this call stays out of the caches the model's layers share: tied weights
        # are found there by id, and the id of a tensor freed after its layer may be reused.
        shared = self.weight_cache, self.packed_by_weight
        self.weight_cache, self.packed_by_weight = {}, {}
        try:
            return self._quantize_layer(name, m, src, w, names)
        finally:
            self.weight_cache, self.packed_by_weight = shared

    def _quantize_layer(self, name: str, m: nn.Module, src: nn.Module, w: torch.Tensor,
                        names: List[str]) -> Optional[SkippedLayer]:
        """Quantize layer ``m`` from ``src`` (``m``, or its plain float copy) and weight ``w``."""
        weights = self.weights
        qcls = qmodule_for_selected(src, self.cfg)
        w = weight_to_quantize(src, w, qcls, self.weight_cache)  # e.g. Conv1D's [in, out]
        has_bias = getattr(src, "bias", None) is not None  # nn.Embedding has no bias
        b = (weights.get(_key(name, "bias")) if weights is not None else tensor_in_use(src, "bias")) \
            if has_bias else None
        key = (id(w), self.qtype.name)
        tied = key in self.packed_by_weight or key in self.weight_cache  # an earlier layer's weight, stored once
        try:
            qm, sqnr = self._build(src, w, key)
        except NonFiniteWeightError as exc:
            exc = float32_overflow(exc, w)
            if self.cfg.nonfinite == "error":
                raise nonfinite_layer_error(name, type(m).__name__, exc.row, exc.what) from None
            return SkippedLayer(name, type(m).__name__, nonfinite_skip_reason(exc))
        if weights is not None:  # the state_dict's dtype, which the float layers (loaded with assign=True) take
            qm.orig_dtype = orig_dtype_of(w.dtype)  # (a meta skeleton is built in the default dtype)
        if weights is not None or b is not getattr(src, "bias", None):  # (a pruned bias: the masked one)
            qm._set_bias(b)
        tied_bias = b is not None and id(b) in self.bias_copies
        if b is not None and qm.bias is not None:
            qm.bias = self.bias_copies.setdefault(id(b), (b, qm.bias))[1]
        self._share_packed(qm, key, sqnr)
        if tied:  # the totals count a tied weight (and bias) once; each layer's row shows its own
            self.report.shared_bytes_before += tensor_bytes(w)
            self.report.shared_bytes_after += qm.weight_nbytes()
        if tied_bias:
            self.report.shared_bytes_before += tensor_bytes(b)
            self.report.shared_bytes_after += tensor_bytes(qm.bias)
        self.memo[id(m)] = qm
        self.quantized_names.extend(names)  # every name of a shared module: its weights are done
        self.report.layers.append(LayerReport(
            name, type(m).__name__, self.qtype.name, _reported_shape(m, w),
            tensor_bytes(w) + tensor_bytes(b), qm.weight_nbytes() + tensor_bytes(qm.bias), sqnr,
            str(qm.orig_dtype).replace("torch.", ""),
        ))
        return None

    def _build(self, m: nn.Module, w: torch.Tensor, key) -> Tuple[QuantizedModule, float]:
        """The quantized module of ``m`` with weight ``w`` and the weight's SQNR."""
        cfg, qtype = self.cfg, self.qtype
        if key in self.packed_by_weight:
            first, sqnr = self.packed_by_weight[key]
            stored = first.quantized_weight()
        elif type(m) is nn.Linear and key not in self.weight_cache and w.numel() > 0 \
                and packs_straight_to_int8(w, cfg):
            # straight into the packed layout: no plain int8 copy beside the packed one
            symmetric = cfg.symmetric_for("Linear")
            qmin, qmax = qtype.qrange(symmetric)
            scale, zero_point, packed, sx, se = quantize_and_pack_int8(w, qmin, qmax, symmetric, True)
            qm = QuantizedLinear.from_packed_int8(m, scale, zero_point, packed, symmetric, cfg.activations)
            qm.set_reduce_range(cfg.reduce_range)
            return qm, sqnr_db(sx, se)
        else:
            stored, sqnr = convert_weight(w, qtype, cfg, type(m).__name__, self.weight_cache)
        qm = qmodule_for_selected(m, cfg).from_float(m, stored)
        if hasattr(qm, "set_activations") and isinstance(stored, QuantizedWeight):
            qm.set_activations(cfg.activations)
        if hasattr(qm, "set_reduce_range") and getattr(qm.format, "packs", False):
            qm.set_reduce_range(cfg.reduce_range)  # (only int8 has the dynamic kernels: uint8 layers keep False)
        return qm, sqnr

    def _share_packed(self, qm: QuantizedModule, key, sqnr: float) -> None:
        """A tied weight's later layers take the first one's packed buffers."""
        if "weight_packed" not in qm._buffers:
            return
        if key in self.packed_by_weight:
            first = self.packed_by_weight[key][0]
            qm.set_packed({n: first._buffers[n] for n in PACKED_BUFFERS})
        else:
            self.packed_by_weight[key] = (qm, sqnr)
            self.weight_cache.pop(key, None)


def _copy_around(model: nn.Module, memo: Dict[int, nn.Module]) -> nn.Module:
    """A deep copy of ``model`` with the float layers in ``memo`` replaced (never copied)."""
    memo.update(hook_computed_copies(model, memo))
    _copy_non_strided(model, memo)
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:  # a model holding something deepcopy refuses (locks, open files, ...)
        raise TypeError(
            f"quantize() copies the model so the original stays untouched, but {type(model).__name__} "
            f"cannot be deep-copied: {exc}"
        ) from exc


def _copy_non_strided(model: nn.Module, memo: Dict[int, object]) -> None:
    """Copies of the model's sparse parameters and buffers into ``memo``: deepcopy clones a tensor with
    memory_format=preserve_format, which sparse layouts refuse (a model holding one could not be copied
    at all, where its layer is only skipped)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.layout != torch.strided and id(tensor) not in memo:
            copied = tensor.detach().clone()
            memo[id(tensor)] = nn.Parameter(copied, tensor.requires_grad) if isinstance(tensor, nn.Parameter) \
                else copied.requires_grad_(tensor.requires_grad)


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
        if parametrize.is_parametrized(m):
            return ("parametrized weight: the state_dict holds its parametrization's tensors (load it into the model "
                    "and quantize the model)")
        if _key(name, "weight") not in weights and any(p in m._parameters for p in ("weight_orig", "weight_v")):
            return ("pruned or weight-normed weight (a hook computes it): the state_dict holds weight_orig / weight_v "
                    "in its place (load it into the model and quantize the model)")
        w = weights.get(_key(name, "weight"))
        if w is None:
            raise KeyError(f"state_dict has no {_key(name, 'weight')!r} for layer {name!r} of the model")
        if getattr(m, "bias", None) is not None and _key(name, "bias") not in weights:
            raise KeyError(f"state_dict has no {_key(name, 'bias')!r} for layer {name!r} of the model")
        if tuple(w.shape) != tuple(m.weight.shape):
            raise ValueError(f"state_dict {_key(name, 'weight')!r} has shape {tuple(w.shape)}, "
                             f"the model's layer expects {tuple(m.weight.shape)}")
    else:
        w = raw_weight(m)  # (a parametrized weight is not computed here)
        if w is None:
            return "layer has no weight (weight is None)"
        if isinstance(w, nn.parameter.UninitializedParameter):
            return "uninitialized lazy module (run a forward pass first)"
    if not w.is_floating_point():
        return f"weight dtype {w.dtype} is not floating point"
    # (a parametrized weight's shape is checked as computed, when the layer is quantized: its
    # originals may be of other shapes, e.g. stored transposed or as two factors)
    declared = None if weights is None and parametrize.is_parametrized(m, "weight") else _declared_shape_reason(m, w)
    return no_data_reason(w) or declared or too_small_reason(w.numel(), cfg)


def _declared_shape_reason(m: nn.Module, w: torch.Tensor) -> Optional[str]:
    """A weight of another shape than the layer's attributes say (a weight replaced by hand, e.g.
    pruned heads): the quantized layer is built from those attributes, so the layer stays float."""
    if isinstance(m, nn.Linear):
        declared, names = (m.out_features, m.in_features), "out_features, in_features"
    elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
        declared = (m.out_channels, m.in_channels // m.groups, *m.kernel_size)
        names = "out_channels, in_channels / groups, *kernel_size"
    elif isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
        declared, names = (m.num_embeddings, m.embedding_dim), "num_embeddings, embedding_dim"
    else:
        return None
    if tuple(w.shape) != declared:
        return (f"weight shape {tuple(w.shape)} differs from the layer's attributes ({names}) = {declared}: "
                f"set them to match the weight to quantize it")
    bias = getattr(m, "bias", None)
    if isinstance(bias, torch.Tensor) and tuple(bias.shape) != declared[:1]:
        return f"bias shape {tuple(bias.shape)} differs from the weight's {declared[0]} outputs"
    return None


def _narrow_reason(m: nn.Module, cfg: QuantConfig, weights: Optional[Mapping], names: List[str]) -> Optional[str]:
    """Why a Linear (or GPT-2 Conv1D) too narrow for the packed int8 layout stays float (narrow.py), or None."""
    qcls = qmodule_for_selected(m, cfg)
    if qcls not in (QuantizedLinear, QuantizedGPT2Conv1D):
        return None
    w = weights[_key(names[0], "weight")] if weights is not None else raw_weight(m)
    if qcls is QuantizedGPT2Conv1D:
        shape = tuple(w.shape)[::-1]  # stored [in, out]
    else:  # (a parametrized weight's largest original need not be [out, in])
        shape = (getattr(m, "out_features", w.shape[0]), getattr(m, "in_features", w.shape[-1]))
    return narrow_reason(cfg, names, shape, w.dtype)


def _load_remaining(qmodel: nn.Module, weights: Mapping, quantized: set) -> None:
    """Load the state_dict entries of the layers left in float into the copy
    (assigning clones, so a meta-device skeleton works); the quantized layers
    already hold theirs.  Raises KeyError listing missing / unexpected keys."""

    def owner(key: str) -> str:
        return key.rsplit(".", 1)[0] if "." in key else ""

    own = qmodel.state_dict()
    expected = {k for k in own if owner(k) not in quantized}
    rest = OrderedDict((k, v) for k, v in weights.items() if owner(k) not in quantized)
    missing, unexpected = sorted(expected - set(rest)), sorted(set(rest) - expected)
    if missing or unexpected:
        raise KeyError(f"state_dict does not match the model: missing keys {missing[:10]}"
                       f"{'...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
                       f"{'...' if len(unexpected) > 10 else ''}")
    for k, v in rest.items():  # (as a quantized layer's is: one line, not torch's load_state_dict report)
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"state_dict {k!r} has shape {tuple(v.shape)}, the model's expects {tuple(own[k].shape)}")
    qmodel.load_state_dict(OrderedDict((k, v.detach().clone()) for k, v in rest.items()), strict=False, assign=True)


# ---- state_dict path --------------------------------------------------------------------------


def _check_state_dict(sd: Mapping) -> None:
    for k in ("state_dict", "model"):  # a trainer's checkpoint (Lightning's starts with "epoch", ...)
        if isinstance(sd.get(k), Mapping) and not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise TypeError(f"state_dict[{k!r}] is a {type(sd[k]).__name__}, not a tensor: a training checkpoint? "
                            f"Pass checkpoint[{k!r}] (the CLI and quantize_checkpoint unwrap such files)")
    for k, v in sd.items():
        if not isinstance(k, str):
            raise TypeError(f"state_dict keys must be str, got {type(k).__name__} ({k!r})")
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"state_dict[{k!r}] must be a torch.Tensor, got {type(v).__name__}: a state_dict holds "
                            f"tensors only (drop other entries, e.g. {{k: v for k, v in sd.items() if "
                            f"isinstance(v, torch.Tensor)}})")


def _quantize_state_dict(sd: Mapping, cfg: QuantConfig, progress: bool) -> QuantizationResult:
    out: Dict[str, torch.Tensor] = OrderedDict()
    report = Report()
    cache: dict = {}
    keys = list(sd.keys())
    check_patterns_match(cfg, layer_names_of_keys(keys), holders=holder_names_of_keys(keys))
    keep_float = attention_out_proj_keys(keys)
    for i, key in enumerate(keys):
        if progress:
            print(f"[{i + 1}/{len(keys)}] {key}", file=sys.stderr, flush=True)
        if key in keep_float:
            out[key] = sd[key].detach().clone()
            report.skipped.append(SkippedLayer(key[: -len(".weight")], *keep_float[key]))
            continue
        tensors, layer, skip = quantize_state_dict_entry(key, sd[key], cfg, cache)
        out.update(tensors)
        if layer is not None:
            report.layers.append(layer)
        if skip is not None:
            report.skipped.append(skip)
    report.model_bytes_before = unique_bytes(sd.values())  # (tied entries once, as the model path)
    report.model_bytes_after = unique_bytes(out.values())
    warn_if_nothing_quantized(report.layers, report.skipped)
    return QuantizationResult(None, report.skipped, report, cfg, state_dict=out)


def _reported_shape(m: nn.Module, w: torch.Tensor) -> tuple:
    """The report's weight shape: the float layer's (a Conv1d's [out, in, k], not the height-1 4-D view
    it is quantized as)."""
    if isinstance(m, nn.Conv1d) and w.dim() == 4:
        return (w.shape[0], w.shape[1], w.shape[3])
    return tuple(w.shape)
