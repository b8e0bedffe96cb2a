"""The parameter-free float modules a static program may keep (pools, activations, resampling,
padding, ...), saved as their class and constructor arguments and rebuilt at load from this fixed
table (called by persist.py; nothing is imported by name).

Every constructor argument that changes what a module computes is saved (tested against torch's
signatures) and checked at load before the module is built: a manifest may hold any JSON, and
torch's constructors take nearly anything, to fail (or compute other numbers) at the first call.
Save runs the same checks, so it refuses a value a file could not hold rather than write one that
would not load.  ``inplace`` is not saved: the program replays float modules out of place (the
same values, and the caller's input is never written)."""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import numpy as np
from torch import nn

from ..errors import CheckpointError
from ..formats.checks import is_int
from .capture import ValueRef

__all__ = ["resample_problem", "FLOAT_MODULES", "FLOAT_BY_NAME", "float_module_kwargs", "build_float_module"]

#: the bound on a pool's kernel size, stride, padding or dilation (as a static conv's: MQ_MAX_CONV_ARG)
_MAX_POOL_ARG = 1 << 20
#: a dimension index: torch tensors have at most 64 dimensions
_MAX_DIM = 64

# an argument's check: (test, what it must be)
_Check = Tuple[Callable[[object], bool], str]


def _real(v, finite: bool = True) -> bool:
    """A number (finite where ``finite``); an int too large for a float is none (math raised
    OverflowError on it, out of the load's checks; the forward would overflow)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        f = float(v)
    except OverflowError:
        return False
    return not math.isnan(f) and (not finite or math.isfinite(f))


def _pair_of(v, lo: int, none_ok: bool = False) -> bool:
    """An int in lo.._MAX_POOL_ARG, or a tuple / list of one or two (or None where ``none_ok``)."""
    one = lambda x: (none_ok and x is None) or (is_int(x, lo) and x <= _MAX_POOL_ARG)  # noqa: E731
    return one(v) if not isinstance(v, (tuple, list)) else 1 <= len(v) <= 2 and all(one(x) for x in v)


_FLAG: _Check = (lambda v: isinstance(v, bool), "True or False")
_FINITE: _Check = (_real, "a finite number")
_DIM: _Check = (lambda v: is_int(v, -_MAX_DIM) and v < _MAX_DIM, f"an int in {-_MAX_DIM}..{_MAX_DIM - 1}")
_OPTIONAL_DIM: _Check = (lambda v: v is None or _DIM[0](v), f"None or {_DIM[1]}")  # (None: torch's implicit dim)
_LAMBDA: _Check = (lambda v: _real(v) and v >= 0, "a finite number >= 0")
_SIZE = lambda lo: (lambda v: _pair_of(v, lo), f"an int or a pair of ints in {lo}..{_MAX_POOL_ARG}")  # noqa: E731
_OPTIONAL_SIZE: _Check = (lambda v: v is None or _pair_of(v, 1),
                          f"None, an int or a pair of ints in 1..{_MAX_POOL_ARG}")


def _pair(v) -> Tuple[int, int]:
    return (v, v) if not isinstance(v, (tuple, list)) else (v[0], v[-1])


def _pool_padding(kw: dict, max_pool: bool) -> Optional[str]:
    """torch's own rule, checked at the first call otherwise: padding at most half the (effective) kernel."""
    if "kernel_size" not in kw:
        return None  # (the constructor says it is missing)
    k, p = _pair(kw["kernel_size"]), _pair(kw.get("padding", 0))
    d = _pair(kw.get("dilation", 1)) if max_pool else (1, 1)
    half = [((ki - 1) * di + 1) // 2 if max_pool else ki // 2 for ki, di in zip(k, d)]
    if any(pi > hi for pi, hi in zip(p, half)):
        return f"padding {kw.get('padding', 0)!r} is over half the kernel ({kw['kernel_size']!r}: at most {half})"
    return None


def _min_below_max(kw: dict) -> Optional[str]:
    lo, hi = kw.get("min_val", -1.0), kw.get("max_val", 1.0)
    return None if lo < hi else f"min_val {lo!r} must be below max_val {hi!r}"


_POOL_WINDOW = {"kernel_size": _SIZE(1), "stride": _OPTIONAL_SIZE, "padding": _SIZE(0), "ceil_mode": _FLAG}

#: the largest resampling factor a file may ask for (an output that many times the input's size, per
#: dimension: every forward allocates it; a 1-D audio model may upsample frames to samples, by 160)
_MAX_SCALE = 1024
#: the most elements a fixed resampling size of several dimensions may ask for per channel (an int
#: size: each dimension's, the rank not known), and the widest padding per side
_MAX_OUT_ELEMENTS = 1 << 30
_MAX_PAD = 1024
_INTERPOLATING = ("linear", "bilinear", "bicubic", "trilinear")


def _one_or_few(test: Callable[[object], bool]) -> Callable[[object], bool]:
    """``test`` on a value, or on each of a tuple / list of 1 to 3 of them."""
    return lambda v: test(v) if not isinstance(v, (tuple, list)) else 1 <= len(v) <= 3 and all(test(x) for x in v)


def _out_size_ok(v) -> bool:
    sizes = list(v) if isinstance(v, (tuple, list)) else [v]
    return _one_or_few(lambda x: is_int(x, 1) and x <= _MAX_POOL_ARG)(v) and math.prod(sizes) <= _MAX_OUT_ELEMENTS


_OUT_SIZE: _Check = (lambda v: v is None or _out_size_ok(v),
                     f"None, or an int or 1 to 3 ints in 1..{_MAX_POOL_ARG}, {_MAX_OUT_ELEMENTS} elements at most")
_SCALE_FACTOR: _Check = (lambda v: v is None or _one_or_few(lambda x: _real(x) and 0 < x <= _MAX_SCALE)(v),
                         f"None, or a number or 1 to 3 numbers in (0, {_MAX_SCALE}]")
_RESAMPLE = {"size": _OUT_SIZE, "scale_factor": _SCALE_FACTOR}
_PAD4: _Check = (lambda v: (is_int(v) and abs(v) <= _MAX_PAD) or (
    isinstance(v, (tuple, list)) and len(v) == 4 and all(is_int(x) and abs(x) <= _MAX_PAD for x in v)),
    f"an int or 4 ints in -{_MAX_PAD}..{_MAX_PAD}")
_FACTOR: _Check = (lambda v: is_int(v, 1) and v <= _MAX_SCALE, f"an int in 1..{_MAX_SCALE}")


def resample_problem(size, scale_factor) -> Optional[str]:
    """What is wrong with a resampling's constant ``size`` / ``scale_factor`` (F.interpolate's, which a
    program replays), or None: the bounds Upsample's arguments have (a traced value is not checked)."""
    for name, value, (ok, what) in (("size", size, _OUT_SIZE), ("scale_factor", scale_factor, _SCALE_FACTOR)):
        if not _has_ref(value) and not ok(value):
            return f"{name} {value!r}: {what}"
    return None


def _has_ref(value) -> bool:
    """Whether a replayed argument reads a value computed in the program (known only at a call)."""
    return isinstance(value, ValueRef) or (isinstance(value, (tuple, list)) and any(isinstance(x, ValueRef)
                                                                                     for x in value))


#: class -> {constructor argument (read back from the attribute of that name): its check}
FLOAT_MODULES: Dict[type, Dict[str, _Check]] = {
    nn.ReLU: {}, nn.ReLU6: {}, nn.Sigmoid: {}, nn.Tanh: {}, nn.SiLU: {}, nn.Hardswish: {}, nn.Identity: {},
    nn.Hardsigmoid: {}, nn.Mish: {}, nn.SELU: {}, nn.LogSigmoid: {}, nn.Softsign: {}, nn.Tanhshrink: {},
    nn.GELU: {"approximate": (lambda v: v in ("none", "tanh"), "'none' or 'tanh'")},
    nn.ELU: {"alpha": _FINITE}, nn.CELU: {"alpha": _FINITE},
    nn.Softplus: {"beta": _FINITE, "threshold": _FINITE},
    nn.Threshold: {"threshold": _FINITE, "value": _FINITE},
    nn.Hardshrink: {"lambd": _LAMBDA}, nn.Softshrink: {"lambd": _LAMBDA},
    nn.Flatten: {"start_dim": _DIM, "end_dim": _DIM},
    nn.Softmax: {"dim": _OPTIONAL_DIM}, nn.LogSoftmax: {"dim": _OPTIONAL_DIM}, nn.Softmin: {"dim": _OPTIONAL_DIM},
    nn.Dropout: {"p": (lambda v: _real(v) and 0 <= v <= 1, "a number in 0..1")},
    nn.LeakyReLU: {"negative_slope": _FINITE},
    nn.Hardtanh: {"min_val": (lambda v: _real(v, finite=False), "a number"),
                  "max_val": (lambda v: _real(v, finite=False), "a number")},
    nn.MaxPool2d: {**_POOL_WINDOW, "dilation": _SIZE(1), "return_indices": _FLAG},
    nn.AvgPool2d: {**_POOL_WINDOW, "count_include_pad": _FLAG,
                   "divisor_override": (lambda v: v is None or (is_int(v) and v != 0 and abs(v) < 2 ** 31),
                                        "None or a nonzero int (what the window's sum is divided by)")},
    nn.AdaptiveAvgPool2d: {"output_size": (lambda v: _pair_of(v, 0, none_ok=isinstance(v, (tuple, list))),
                                           f"an int or a pair of ints (or None) in 0..{_MAX_POOL_ARG}")},
    nn.Upsample: {**_RESAMPLE, "mode": (lambda v: v in ("nearest", "nearest-exact", "area") + _INTERPOLATING,
                                        f"one of nearest, nearest-exact, area, {', '.join(_INTERPOLATING)}"),
                  "align_corners": (lambda v: v is None or isinstance(v, bool), "None, True or False"),
                  "recompute_scale_factor": (lambda v: v is None or isinstance(v, bool), "None, True or False")},
    nn.UpsamplingNearest2d: _RESAMPLE, nn.UpsamplingBilinear2d: _RESAMPLE,
    nn.PixelShuffle: {"upscale_factor": _FACTOR}, nn.PixelUnshuffle: {"downscale_factor": _FACTOR},
    nn.ZeroPad2d: {"padding": _PAD4}, nn.ConstantPad2d: {"padding": _PAD4, "value": _FINITE},
    nn.ReflectionPad2d: {"padding": _PAD4}, nn.ReplicationPad2d: {"padding": _PAD4},
}
FLOAT_BY_NAME = {c.__name__: c for c in FLOAT_MODULES}


def _size_or_scale(kw: dict) -> Optional[str]:
    """torch's rule, checked at the first call otherwise: an output size or a scale factor, not both."""
    if (kw.get("size") is None) == (kw.get("scale_factor") is None):
        return "give one of size and scale_factor"
    if kw.get("align_corners") is not None and kw.get("mode", "nearest") not in _INTERPOLATING:
        return f"align_corners is for the interpolating modes ({', '.join(_INTERPOLATING)}) only"
    return None


# checks across arguments, before the constructor runs
_ACROSS: Dict[type, Callable[[dict], Optional[str]]] = {
    nn.Upsample: _size_or_scale, nn.UpsamplingNearest2d: _size_or_scale, nn.UpsamplingBilinear2d: _size_or_scale,
    nn.MaxPool2d: lambda kw: _pool_padding(kw, max_pool=True),
    nn.AvgPool2d: lambda kw: _pool_padding(kw, max_pool=False),
    nn.Hardtanh: _min_below_max,
}


def _problem(cls: type, kwargs: dict) -> Optional[str]:
    """What is wrong with ``kwargs`` for ``cls`` (None: nothing)."""
    checks = FLOAT_MODULES[cls]
    unknown = set(kwargs) - set(checks)
    if unknown:
        return f"arguments {sorted(unknown)} are not among {list(checks)}"
    for arg, value in kwargs.items():
        test, what = checks[arg]
        if not test(value):
            return f"{arg} must be {what}, got {value!r}"
    across = _ACROSS.get(cls)
    return across(kwargs) if across else None


def _plain(value):
    """A NumPy scalar as the Python number it holds (torch takes either; a file holds JSON)."""
    return value.item() if isinstance(value, np.generic) else value


def float_module_kwargs(name: str, m: nn.Module) -> dict:
    """The constructor arguments to save of a float module of a FLOAT_MODULES class (ValueError
    naming the layer and the argument where a value would not load)."""
    cls = type(m)
    kwargs = {a: _plain(getattr(m, a)) for a in FLOAT_MODULES[cls]}
    problem = _problem(cls, kwargs)
    if problem:
        raise ValueError(f"cannot save static model: layer {name!r} ({cls.__name__}): {problem}, which a static "
                         f"file cannot hold")
    return kwargs


def build_float_module(name: str, cls_name: str, kwargs: dict) -> nn.Module:
    """The float module a manifest entry describes, its arguments checked first.  An argument the
    entry leaves out takes the constructor's default (files written before it was saved)."""
    cls = FLOAT_BY_NAME[cls_name]
    problem = _problem(cls, kwargs)
    if problem:
        raise CheckpointError(f"layer {name!r} ({cls_name}): {problem}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as exc:  # torch's own checks (a missing kernel_size)
        raise CheckpointError(f"layer {name!r} ({cls_name}): {exc}") from None
