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

import warnings
from typing import Optional

from torch import nn

__all__ = ["compiled_inner", "compiled_like"]


def compiled_inner(model) -> Optional[nn.Module]:
    """The module ``torch.compile`` wrapped in ``model``; None when ``model`` is no such wrapper."""
    kind = type(model)
    if kind.__name__ != "OptimizedModule" or not kind.__module__.startswith("torch._dynamo"):
        return None
    inner = model._modules.get("_orig_mod")
    return inner if isinstance(inner, nn.Module) else None


def compiled_like(wrapper: nn.Module, model: nn.Module) -> nn.Module:
    """``model`` compiled as ``wrapper``'s module was (a new wrapper, the same settings); ``model``
    itself, with a warning, where this torch builds its wrappers otherwise."""
    try:
        return type(wrapper)(model, wrapper.dynamo_ctx)
    except (AttributeError, TypeError) as exc:
        warnings.warn(f"the quantized model is returned uncompiled ({exc}): call torch.compile on it",
                      stacklevel=3)
        return model
