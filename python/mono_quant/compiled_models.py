"""Models wrapped by ``torch.compile``: their layers are named as in the model they wrap.

``torch.compile(model)`` returns an ``OptimizedModule`` that holds the model as its
``_orig_mod`` child, so every name under it starts with ``_orig_mod.``: include / exclude
had to spell that prefix, a saved file carried it and loaded into nothing but another
compiled model.  quantize(), save() and load() take the wrapped model instead, and
quantize() / load() give the quantized model back compiled with the wrapper's own
torch.compile settings (its ``dynamo_ctx``).  Found by type name: importing torch._dynamo
here would cost every ``import mono_quant`` a second.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple

from torch import nn

from .warn_site import warn_at_caller

__all__ = ["PREFIX", "compiled_inner", "uncompiled", "compiled_like", "compiled_inputs"]

#: the name torch.compile's wrapper gives the model it holds: every name under it starts so
PREFIX = "_orig_mod."


def compiled_inner(model) -> Optional[nn.Module]:
    """The module ``torch.compile`` wrapped in ``model``; None when ``model`` is no such wrapper."""
    kind = type(model)
    if kind.__name__ != "OptimizedModule" or not kind.__module__.startswith("torch._dynamo"):
        return None
    inner = model._modules.get("_orig_mod")
    return inner if isinstance(inner, nn.Module) else None


def uncompiled(obj):
    """The module torch.compile wrapped in ``obj``; ``obj`` itself when it is no such wrapper."""
    inner = compiled_inner(obj)
    return obj if inner is None else inner


def compiled_like(wrapper: nn.Module, model: nn.Module) -> nn.Module:
    """``model`` compiled as ``wrapper``'s module was (a new wrapper, the same settings); ``model``
    itself, with a warning, where this torch builds its wrappers otherwise."""
    try:
        return type(wrapper)(model, wrapper.dynamo_ctx)
    except (AttributeError, TypeError) as exc:
        warn_at_caller(f"the quantized model is returned uncompiled ({exc}): call torch.compile on it")
        return model


def compiled_inputs(model_or_state_dict, model, cfg) -> Tuple[Any, Any, Any]:
    """quantize()'s inputs with torch.compile's wrappers taken off: the wrapped models, a state_dict of
    a wrapper (every key under ``_orig_mod.``) named as the wrapped model's, and include / exclude
    globs written with the wrapper's prefix (as they had to be before) without it."""
    model_or_state_dict = uncompiled(model_or_state_dict)
    if model is not None:
        model = uncompiled(model)
        if isinstance(model_or_state_dict, Mapping) and model_or_state_dict and all(
                isinstance(k, str) and k.startswith(PREFIX) for k in model_or_state_dict):
            model_or_state_dict = {k[len(PREFIX):]: v for k, v in model_or_state_dict.items()}
    patterns = {name: [p[len(PREFIX):] if isinstance(p, str) and p.startswith(PREFIX) else p
                       for p in getattr(cfg, name)]
                for name in ("include", "exclude") if getattr(cfg, name) is not None}
    return model_or_state_dict, model, dataclasses.replace(cfg, **patterns) if patterns else cfg
