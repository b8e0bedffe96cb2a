"""The float modules with parameters a static program may keep (a LayerNorm or GroupNorm between
int8 layers, a Conv1d, a BatchNorm not folded, a Linear / Conv2d left float by include / exclude),
saved as their class, constructor arguments and tensors, and rebuilt at load from this fixed table
(called by persist.py; nothing is imported by name).

At load the module is built on the meta device from its arguments, checked first (no memory for a
manifest's sizes), and takes the file's tensors, whose names, shapes and dtypes must be the ones
those arguments make.  (Before, save refused such a model: "a float module with parameters or
buffers, which a static file does not hold".)  ``device`` / ``dtype`` are not arguments here: the
tensors say the dtype; an Embedding's ``_weight`` is its tensor, ``_freeze`` and a PReLU's ``init``
only set what the tensors replace.
"""
from __future__ import annotations

import inspect
from typing import Dict, Optional

import torch
from torch import nn

from ..errors import CheckpointError
from ..formats.checks import is_int, spec
from ..orig_dtype import ORIG_DTYPES
from .conv_padding import PADDING_MODES
from .persist_float import _FLAG, _MAX_POOL_ARG, _Check, _real

__all__ = ["WEIGHTED_FLOAT_MODULES", "WEIGHTED_BY_NAME", "weighted_module_kwargs", "check_saved_tensors",
           "build_weighted_module"]

#: a size or index bound (an int32's range: every tensor dimension the kernels see fits it)
_MAX = (1 << 31) - 1
#: a conv's kernel size, stride, padding or dilation at most (a static conv's bound, as a pool's)
_MAX_CONV_ARG = _MAX_POOL_ARG


def _count(lo: int) -> _Check:
    return (lambda v: is_int(v, lo) and v <= _MAX, f"an int in {lo}..{_MAX}")


def _ints(n: Optional[int], lo: int, text: str, hi: int = _MAX) -> _Check:
    """A tuple / list of ``n`` ints (1..8 when n is None) in lo..hi."""
    def test(v) -> bool:
        return (isinstance(v, (tuple, list)) and (len(v) == n if n else 1 <= len(v) <= 8)
                and all(is_int(x, lo) and x <= hi for x in v))
    return test, text


_EPS: _Check = (lambda v: _real(v) and v >= 0, "a finite number >= 0")
_MOMENTUM: _Check = (lambda v: v is None or (_real(v) and 0 <= v <= 1), "None or a number in 0..1")
_OPTIONAL_REAL: _Check = (lambda v: v is None or _real(v), "None or a finite number")


def _conv(n: int) -> Dict[str, _Check]:
    # kernel, stride, padding and dilation bounded as a static conv's (MQ_MAX_CONV_ARG): a padding of
    # 2^31 is an allocation of terabytes at the first call
    geometry = lambda lo: _ints(n, lo, f"{n} ints in {lo}..{_MAX_CONV_ARG}", _MAX_CONV_ARG)  # noqa: E731
    pad_ints = geometry(0)
    return {"in_channels": _count(1), "out_channels": _count(1),
            "kernel_size": geometry(1), "stride": geometry(1),
            "padding": (lambda v: v in ("same", "valid") or pad_ints[0](v), f"'same', 'valid' or {pad_ints[1]}"),
            "dilation": geometry(1), "groups": _count(1), "bias": _FLAG,
            "padding_mode": (lambda v: isinstance(v, str) and v in PADDING_MODES,
                             ", ".join(repr(m) for m in PADDING_MODES))}


_BATCH_NORM = {"num_features": _count(1), "eps": _EPS, "momentum": _MOMENTUM, "affine": _FLAG,
               "track_running_stats": _FLAG, "bias": _FLAG}

#: class -> {constructor argument: its check}; read back from the attribute of that name, but
#: ``bias`` (whether the module has one)
WEIGHTED_FLOAT_MODULES: Dict[type, Dict[str, _Check]] = {
    nn.Linear: {"in_features": _count(0), "out_features": _count(0), "bias": _FLAG},
    nn.Conv1d: _conv(1),
    nn.Conv2d: _conv(2),
    nn.LayerNorm: {"normalized_shape": _ints(None, 1, "1 to 8 ints >= 1"), "eps": _EPS, "elementwise_affine": _FLAG,
                   "bias": _FLAG},
    nn.GroupNorm: {"num_groups": _count(1), "num_channels": _count(1), "eps": _EPS, "affine": _FLAG, "bias": _FLAG},
    nn.BatchNorm1d: _BATCH_NORM,
    nn.BatchNorm2d: _BATCH_NORM,
    nn.Embedding: {"num_embeddings": _count(1), "embedding_dim": _count(0),
                   "padding_idx": (lambda v: v is None or (is_int(v) and abs(v) <= _MAX), "None or an int"),
                   "max_norm": _OPTIONAL_REAL, "norm_type": (_real, "a finite number"),
                   "scale_grad_by_freq": _FLAG, "sparse": _FLAG},
    nn.PReLU: {"num_parameters": _count(1)},
}
WEIGHTED_BY_NAME = {c.__name__: c for c in WEIGHTED_FLOAT_MODULES}
#: the classes whose ``bias`` argument this torch lacks (GroupNorm's and BatchNorm's are recent): there a
#: module has a bias exactly when it is affine, and a file saying otherwise needs a newer torch
_NO_BIAS_ARGUMENT = {c for c, args in WEIGHTED_FLOAT_MODULES.items()
                     if "bias" in args and "bias" not in inspect.signature(c.__init__).parameters}


def _problem(cls: type, kwargs: dict) -> Optional[str]:
    checks = WEIGHTED_FLOAT_MODULES[cls]
    if set(kwargs) != set(checks):
        return f"arguments {sorted(kwargs)}, expected {sorted(checks)}"
    for arg, value in kwargs.items():
        test, what = checks[arg]
        if not test(value):
            return f"{arg} must be {what}, got {value!r}"
    return None


def weighted_module_kwargs(name: str, m: nn.Module) -> dict:
    """The constructor arguments to save of a module of a WEIGHTED_FLOAT_MODULES class (ValueError
    naming the layer where a value would not load)."""
    cls = type(m)
    kwargs = {a: (getattr(m, "bias", None) is not None if a == "bias" else getattr(m, a))
              for a in WEIGHTED_FLOAT_MODULES[cls]}
    kwargs = {a: (tuple(v) if isinstance(v, (tuple, list, torch.Size)) else v) for a, v in kwargs.items()}
    problem = _problem(cls, kwargs)
    if problem:
        raise ValueError(f"cannot save static model: layer {name!r} ({cls.__name__}): {problem}, which a static "
                         f"file cannot hold")
    return kwargs


def check_saved_tensors(name: str, m: nn.Module, kwargs: dict) -> None:
    """TypeError at save when ``m`` holds other tensors than a module of its arguments (a pruned layer's
    ``weight_orig`` / ``weight_mask``, weight_norm's ``weight_g`` / ``weight_v``, a buffer of the user's):
    the file would not load."""
    with torch.device("meta"):
        expected = set(type(m)(**kwargs).state_dict())
    held = set(m.state_dict())
    if held != expected:
        raise TypeError(f"cannot save static model: layer {name!r} ({type(m).__name__}) holds tensors {sorted(held)} "
                        f"where a {type(m).__name__} holds {sorted(expected)} (a pruned or weight-normed layer: "
                        f"prune.remove / torch.nn.utils.remove_weight_norm it in the model before quantizing)")


def build_weighted_module(name: str, cls_name: str, kwargs: dict, own: Dict[str, torch.Tensor]) -> nn.Module:
    """The float module a manifest entry describes, holding ``own`` (its tensors from the file):
    arguments checked, then the module built on the meta device, then the tensors checked against it."""
    cls = WEIGHTED_BY_NAME[cls_name]
    where = f"layer {name!r} ({cls_name})"
    problem = _problem(cls, {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    if problem:
        raise CheckpointError(f"{where}: {problem}")
    if cls in _NO_BIAS_ARGUMENT:
        if kwargs["bias"] != kwargs["affine"]:
            raise CheckpointError(f"{where}: bias={kwargs['bias']} with affine={kwargs['affine']} needs a torch "
                                  f"whose {cls_name} takes bias= (torch {torch.__version__} does not)")
        kwargs = {k: v for k, v in kwargs.items() if k != "bias"}
    try:
        with torch.device("meta"):
            m = cls(**kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:  # torch's own checks (groups, padding)
        raise CheckpointError(f"{where}: {exc}") from None
    expected = m.state_dict()
    if set(own) != set(expected):
        raise CheckpointError(f"{where}: tensors {sorted(own)}, its arguments make {sorted(expected)}")
    float_dtypes = {t.dtype for k, t in own.items() if expected[k].is_floating_point()}
    for key, t in expected.items():
        got = own[key]
        floating = t.is_floating_point()
        if tuple(got.shape) != tuple(t.shape) or (floating and got.dtype not in ORIG_DTYPES) or (
                not floating and got.dtype != t.dtype) or (floating and len(float_dtypes) > 1):
            raise CheckpointError(f"{where}: {key} is {spec(got)}, its arguments make {spec(t)} (its float "
                                  f"tensors of one of float32, float16, bfloat16, float64)")
    m.load_state_dict(own, assign=True)
    return m.eval()
