"""Which layers a QuantConfig selects: ``include`` / ``exclude`` globs or types.

Shared by the model path (:mod:`mono_quant.api`) and the per-entry
state_dict path (:mod:`mono_quant.entries`).
"""
from __future__ import annotations

import fnmatch
from typing import Iterable, List, Optional

from torch import nn

from .config import QuantConfig

__all__ = ["selection_reason", "matching_include", "too_small_reason", "of_type"]


def of_type(module: nn.Module, p: type) -> bool:
    """Whether a type pattern names ``module``: its class, or for a layer an earlier quantize() call
    made, the float class it stands for (include=[nn.LSTM] names a QuantizedLSTM as include=["lstm"]
    does; it said "matches no layer: check the spelling")."""
    if isinstance(module, p):
        return True
    float_type = getattr(type(module), "float_type", None)
    return isinstance(float_type, type) and float_type is not nn.Module and issubclass(float_type, p)


def _matches(patterns: Iterable, names: List[str], module: Optional[nn.Module]):
    """The first pattern (glob on any of the names, or a type) that matches, else None."""
    for p in patterns:
        if isinstance(p, str):
            if any(fnmatch.fnmatchcase(n, p) for n in names):
                return p
        elif isinstance(p, type):
            if module is not None and of_type(module, p):
                return p
        else:
            raise TypeError(f"include/exclude entries must be name globs (str) or module types, got {p!r}")
    return None


def selection_reason(cfg: QuantConfig, names: List[str], module: Optional[nn.Module]) -> Optional[str]:
    """Why a supported layer (known by ``names``; ``module`` None on the state_dict
    path) is not selected, or None when it is."""
    if cfg.exclude:
        hit = _matches(cfg.exclude, names, module)
        if hit is not None:
            return f"excluded by exclude={_pattern_repr(hit)}"
    if cfg.include is not None:  # (an empty list selects nothing: None is "every layer")
        if not cfg.include:
            return "include is empty: it selects no layer (include=None selects every layer)"
        if _matches(cfg.include, names, module) is None:
            return "not matched by include"
    return None


def too_small_reason(numel: int, cfg: QuantConfig) -> Optional[str]:
    """Why a layer of ``numel`` weights stays float under ``min_weight_numel``, or None."""
    if numel < cfg.min_weight_numel:
        return f"too small: {numel} weights < min_weight_numel={cfg.min_weight_numel}"
    return None


def matching_include(cfg: QuantConfig, names: List[str], module: Optional[nn.Module]) -> Optional[str]:
    """The ``include`` entry (as written: a quoted glob or a type's name) that names this
    layer, or None (no include, or none matches)."""
    hit = _matches(cfg.include, names, module) if cfg.include else None
    return None if hit is None else _pattern_repr(hit)


def _pattern_repr(p) -> str:
    return repr(p) if isinstance(p, str) else p.__name__
