"""quantize(model, "int8", activations="static", calibration=data, observer=...) (issue 12).

1. Capture: torch.fx trace -> fusion plan (BatchNorm folded, ReLU fused; capture.py).
   A model fx can't trace falls back to per-layer static int8 (fallback.py).
2. Calibrate: the fused float graph through ``calibration.Calibrator`` (ranges at the
   fused outputs, any observer).
3. Convert: int8 modules with fixed scales, int8 between them where every consumer
   takes int8 (convert.py).
4. Check: warnings for few samples, NaN/Inf, > 1 % clipped, low output SQNR.
"""
from __future__ import annotations

import copy
import itertools
import math
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..warn_site import warn_at_caller
from ..calibration import DEFAULT_BINS, CalibrationWarning, Calibrator
from ..calibration.calibrator import refuse_top_level_tuple
from ..config import resolve_config
from ..errors import ConfigError
from ..module_hooks import hook_computed_copies
from ..parametrized import parametrized_base, plain_float_layer
from .calibration_check import require_samples
from ..report import SkippedLayer
from ..result import QuantizationResult
from ..strictness import warn_if_nothing_quantized
from .arguments import untraced_optionals
from .capture import LAYER_KINDS, TraceError, build_plan
from .convert import LAYER_CLASSES, NONNEGATIVE_ZERO_POINT, QUANT_KINDS, convert_plan
from .fallback import quantize_per_layer, static_targets
from .graph import FusedFloat, float_graph
from .conv1d import StaticConv1d
from .modules import StaticAdd, StaticConv2d, StaticGlobalAvgPool, StaticLinear
from .modules_eltwise import StaticCat
from .report import StaticLayerReport, StaticReport, clipped_fraction
from .selection import StaticSelection

__all__ = ["quantize_static", "MAX_CLIPPED", "MIN_SQNR_DB", "SQNR_PROBE_SAMPLES"]

#: warn when more than this share of an activation's calibration values fall outside its range
MAX_CLIPPED = 0.01
#: warn when a layer's output SQNR against the float model falls below this (dB)
MIN_SQNR_DB = 20.0
#: calibration samples the SQNR check runs through both models
SQNR_PROBE_SAMPLES = 64

_STATIC_TYPES = (StaticConv2d, StaticConv1d, StaticLinear, StaticAdd, StaticGlobalAvgPool, StaticCat)


def quantize_static(model, cfg, calibration, observer: Optional[str], calibration_samples: Optional[int],
                    progress: bool = False) -> QuantizationResult:
    """The static branch of ``quantize()``; see its docstring and docs/static.md."""
    cfg = resolve_config(cfg, observer=observer, calibration_samples=calibration_samples)
    if cfg.activations != "static":
        raise ConfigError("calibration=, observer= and calibration_samples= apply to activations='static' only "
                          f"(got activations={cfg.activations!r})")
    if not isinstance(model, nn.Module):
        raise TypeError("activations='static' needs the model (an nn.Module): calibration runs it; a state_dict "
                        "cannot be calibrated")
    if cfg.dtype != "int8":
        raise ConfigError(f"activations='static' is for dtype 'int8', got {cfg.dtype!r}")
    _refuse_unused_options(cfg)
    if calibration is None:
        raise ConfigError("activations='static' needs calibration= data: a tensor, a list / iterable / DataLoader "
                          "of tensors, (x, y) tuples or dicts, or a callable that runs the model")
    _refuse_off_cpu(model)
    # the caller's model is never touched (fx, folding, hooks); a pruning / weight_norm hook's computed
    # weight is copied recomputed and detached (deepcopy refuses it: not a graph leaf)
    work = copy.deepcopy(model, hook_computed_copies(model, {})).eval()
    sel = StaticSelection(work, cfg)  # include / exclude / min_weight_numel, layers quantized already
    _unparametrize(work, sel)
    plan, fallback = None, sel.already_reason()  # layers quantized already: fx would trace into their code
    if fallback is None:
        # optional arguments calibration never passes: captured as None (their `is None` paths)
        none_args, calibration = untraced_optionals(work, calibration)
        try:
            plan = build_plan(work, sel.keep_float, none_args)
        except TraceError as exc:
            fallback = str(exc)
    if plan is not None and not any(op.kind in QUANT_KINDS for op in plan.ops):  # (nothing to calibrate)
        targets, left_float = static_targets(work, sel.keep_float, sel.held)
        if not targets:  # nothing to calibrate: the float copy, with the reasons, as dynamic int8 gives
            report = StaticReport(capture="none", observer=cfg.observer, skipped=left_float)
            warn_if_nothing_quantized([], report.skipped)
            return QuantizationResult(work, report.skipped, report, cfg)
        plan, fallback = None, "torch.fx captured no call of a Conv2d / Conv1d / Linear with one positional input"
    if plan is None:
        result = quantize_per_layer(work, cfg, calibration, fallback, sel.keep_float, sel.held, sel.already)
    else:
        result = _quantize_plan(plan, cfg, calibration)
    warn_if_nothing_quantized([r for r in result.report.layers if r.kind in LAYER_CLASSES], result.skipped)
    return result


def _unparametrize(work: nn.Module, sel: StaticSelection) -> None:
    """Make each selected Conv2d / Conv1d / Linear of the private copy whose weight alone is parametrized
    (weight_norm, spectral_norm, orthogonal) its plain layer holding the weight it computes in eval
    mode, as dynamic int8 quantizes it (it stayed float: "no int8 kernel").  A layer not selected
    stays as it is, and so does one the model holds under two names (one module must stay one)."""
    names: Dict[int, List[str]] = {}
    for name, m in work.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(name)
    for parent in list(work.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is None or parametrized_base(child) not in LAYER_KINDS or id(child) in sel.held:
                continue
            qualified = names[id(child)]
            if len(qualified) == 1 and sel.keep_float(qualified[0], child) is None:
                parent._modules[child_name] = plain_float_layer(child)


def _quantize_plan(plan, cfg, calibration) -> QuantizationResult:
    """Steps 2-4 on the fusion plan of the model's copy."""
    fmodel = float_graph(plan)
    bins = None if cfg.observer == "minmax" else DEFAULT_BINS
    cal = Calibrator(fmodel, bins=bins, per_channel=False)
    cal.types = (FusedFloat,)  # only the fused outputs (and inputs coming from outside them)
    probe: List[Any] = []
    cal.feed(_keep_first(calibration, probe), cfg.calibration_samples)
    require_samples(cal, calibration)
    # points are named after the graph's modules, "layers.<op>": keyed by op here
    # a never-negative activation gets the 255 codes -127..127 on [0, max] (convert.qparams)
    one_sided = 127 - NONNEGATIVE_ZERO_POINT + 1
    ranges = {_op_point(k): v for k, v in cal.ranges(cfg.observer, one_sided_levels=one_sided).items()}
    stats = {_op_point(k): v for k, v in cal.stats.items()}
    aliases = {_op_point(k): _op_point(v) for k, v in cal.aliases.items()}
    nonnegative = {p: bool(s.has_data and s.min[0] >= 0) for p, s in stats.items()}
    broadcast = [n for n, m in fmodel.layers.items() if getattr(m, "broadcast", False)]
    for op in plan.ops:
        if op.kind == "cat":
            op.seen_rank = fmodel.layers[op.name].seen_rank
    qmodel, int8, in_float = convert_plan(plan, ranges, aliases, nonnegative, broadcast)
    report = StaticReport(capture="fx", observer=cfg.observer, samples=cal.samples, not_fused=plan.not_fused)
    for op in plan.ops:
        if op.kind not in QUANT_KINDS:
            continue
        r = ranges.get(f"{op.name}.output")
        st = stats.get(f"{op.name}.output")
        clipped = clipped_fraction(st, r.lo, r.hi) if (r is not None and st is not None) else None
        report.layers.append(StaticLayerReport(
            op.name, op.kind, op.fused, op.act, "int8" if int8.get(op.name) else "float",
            (0.0 if nonnegative.get(f"{op.name}.output") else r.lo) if r else math.nan, r.hi if r else math.nan,
            _out_scale(qmodel, op.name) if (r and int8.get(op.name)) else None,
            clipped))
    for name, kind, why in plan.kept_float:
        report.skipped.append(SkippedLayer(name, kind, why))
    layers = _weighted_float_layers(plan)
    for name, why in in_float + plan.not_fused:
        # a layer with weights (an Embedding, a Conv1d) by its module path and type, as dynamic int8 lists it
        report.skipped.append(SkippedLayer(*layers[name], why) if name in layers else SkippedLayer(name, "op", why))
    if probe:
        _add_sqnr(report, fmodel, qmodel, probe[0])
    _warn(report)
    return QuantizationResult(qmodel, report.skipped, report, cfg)


def _weighted_float_layers(plan) -> Dict[str, tuple]:
    """fx node -> (module path, type) of each float op that calls a module with a weight of its own."""
    found = {}
    for op in plan.ops:
        if op.kind == "float" and op.call and op.call[0] == "call_module" and op.module is not None \
                and any(p.dim() >= 2 for p in op.module.parameters(recurse=False)):
            found[op.name] = (op.call[1], type(op.module).__name__)
    return found


def _refuse_unused_options(cfg) -> None:
    """ConfigError for an option static int8 cannot honour (its weights are per-channel symmetric int8;
    it replaces Conv2d and Linear only), rather than ignoring it: given as an argument, in a config
    file or in a QuantConfig alike (the file's values were ignored without a word)."""
    unusable = {  # option -> (value it may not take, as an argument, why, the value that overrides it)
        "symmetric": (cfg.symmetric is False, "symmetric=False", "static int8 weights are symmetric", "True"),
        "granularity": (cfg.granularity != "per_channel", f"granularity={cfg.granularity!r}",
                        "static int8 weights are per channel", "'per_channel'"),
        "embeddings": (bool(cfg.embeddings), "embeddings=True",
                       "static int8 replaces Conv2d, Conv1d and Linear layers only", "False"),
    }
    wrong, from_files = [], []
    for name, (bad, shown, why, override) in unusable.items():
        if not bad:
            continue
        origin = cfg.source.get(name, "QuantConfig")
        if origin == "argument":
            wrong.append(f"{shown} ({why})")
        else:
            where = "the QuantConfig" if origin == "QuantConfig" else f"config file {origin}"
            wrong.append(f"{shown} from {where} ({why})")
            from_files.append(f"{name}={override}")
    if wrong:
        fix = (f"leave {'it' if len(wrong) == 1 else 'them'} unset, or use activations='dynamic'" if not from_files
               else f"remove {'it' if len(wrong) == 1 else 'them'} there or pass {', '.join(from_files)} to "
                    f"override, or use activations='dynamic'")
        raise ConfigError(f"activations='static' cannot honour {', '.join(wrong)}: {fix}")


def _out_scale(qmodel, name: str) -> Optional[float]:
    """The output scale the op's module was built with (a concatenation's, when it shares one)."""
    return getattr(qmodel.layers[name], "out_scale", None) if name in qmodel.layers else None


def _op_point(point: str) -> str:
    return point[len("layers."):] if point.startswith("layers.") else point


def _keep_first(data, probe: List[Any]):
    """The data as fed, keeping (up to SQNR_PROBE_SAMPLES of) its first batch for the SQNR check."""
    refuse_top_level_tuple(data)  # before it becomes a generator the calibrator can't tell from a list
    if isinstance(data, torch.Tensor):
        probe.append(data[:SQNR_PROBE_SAMPLES])
        return data
    if callable(data) and not hasattr(data, "__iter__"):
        return data  # a callable runs the model itself: no batch to keep, no SQNR

    def batches():
        for i, batch in enumerate(data):
            if i == 0:
                probe.append(_head(batch))
            yield batch
    if isinstance(data, dict):
        probe.append(_head(data))
        return data
    return batches()


def _head(batch):
    if isinstance(batch, torch.Tensor):
        return batch[:SQNR_PROBE_SAMPLES]
    if isinstance(batch, dict):
        return {k: _head(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_head(v) for v in batch)
    return batch


def _call(model, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(batch[0])
    return model(batch)


def _as_float(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """A static op's output as the float tensor it stands for (int8 NHWC -> NCHW float)."""
    if y.dtype != torch.int8:
        return y.float()
    y = (y.float() - module.out_zp) * module.out_scale
    if isinstance(module, StaticConv1d):  # codes [batch, 1, length, channels] ([1, length, channels] unbatched)
        return y.reshape(-1, y.shape[-2], y.shape[-1]).transpose(1, 2)
    return y.permute(0, 3, 1, 2) if y.dim() == 4 else y


def _sqnr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    ref, got = ref.double().reshape(-1), got.double().reshape(-1)
    finite = torch.isfinite(ref)  # NaN/Inf in the probe batch (calibration warned already) don't count
    ref, got = ref[finite], got[finite]
    noise = float(((ref - got) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def _add_sqnr(report: StaticReport, fmodel: nn.Module, qmodel: nn.Module, batch) -> None:
    """Each fused op's output SQNR against the float graph on the probe batch (errors of the
    layers before it included: what the network really sees)."""
    outs: Dict[str, Dict[str, torch.Tensor]] = {"f": {}, "q": {}}

    def hook(tag, name):
        def run(module, args, out):
            outs[tag][name] = out if tag == "f" else _as_float(module, out) if isinstance(module, _STATIC_TYPES) \
                else out
        return run
    handles = []
    for tag, model in (("f", fmodel), ("q", qmodel)):
        for name, m in model.layers.items():
            handles.append(m.register_forward_hook(hook(tag, name)))
    try:
        with torch.no_grad():
            _call(fmodel, batch)
            _call(qmodel, batch)
    finally:
        for h in handles:
            h.remove()
    for r in report.layers:
        if r.name in outs["f"] and r.name in outs["q"]:
            r.sqnr_db = _sqnr_db(outs["f"][r.name], outs["q"][r.name])


def _warn(report: StaticReport) -> None:
    clipped = [(r.name, r.clipped) for r in report.layers if r.clipped is not None and r.clipped > MAX_CLIPPED]
    if clipped:
        listed = ", ".join(f"{n} {100 * c:.2f}%" for n, c in clipped)
        warn_at_caller(f"more than {100 * MAX_CLIPPED:g}% of the calibration values fall outside the range of: "
                       f"{listed} (observer {report.observer!r}; 'minmax' clips nothing)", CalibrationWarning)
    low = [(r.name, r.sqnr_db) for r in report.layers if r.sqnr_db is not None and r.sqnr_db < MIN_SQNR_DB]
    if low:
        listed = ", ".join(f"{n} {s:.1f} dB" for n, s in low)
        warn_at_caller(f"output SQNR against float below {MIN_SQNR_DB:g} dB at: {listed} (more calibration data, "
                       "another observer, or exclude those layers)", CalibrationWarning)


def _refuse_off_cpu(model: nn.Module) -> None:
    """ConfigError for a model whose tensors are not on the CPU: a static int8 model runs the C
    kernels (a GPU model failed deep in quantize() with NumPy's "can't convert cuda:0 device type
    tensor to numpy"; a meta one with "Tensor.item() cannot be called on meta tensors")."""
    devices = sorted({str(t.device) for t in itertools.chain(model.parameters(), model.buffers())
                      if t.device.type != "cpu"})
    if devices == ["meta"]:
        raise ConfigError("activations='static' calibrates the model on its data: the model has tensors on the "
                          "meta device (no values); load its weights first (load_state_dict(..., assign=True) "
                          "or to_empty() and a load)")
    if devices:
        raise ConfigError(
            f"activations='static' quantizes and runs on the CPU (its kernels are CPU code); the model has "
            f"tensors on {', '.join(devices)}: quantize model.cpu() with calibration data on the CPU, or keep "
            f"the model on the GPU with activations='dynamic' or None (weight-only), which run there")
