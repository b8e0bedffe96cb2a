"""A quantized layer's ``.weight`` view is read-only: a write into it (``nn.init.zeros_(layer.weight)``,
``layer.weight.mul_(2)``, ``layer.weight[0] = 0``, ``torch.add(a, b, out=layer.weight)``) went into
a dequantized temporary and was lost without a word.  Refuse it, saying what to do."""
from __future__ import annotations

import torch

__all__ = ["refuse_writes"]


# in-place by name, but no write into the values (a frozen-weights loop calls requires_grad_(False))
_NOT_WRITES = frozenset({"requires_grad_", "detach_", "share_memory_"})


def _in_place(func) -> bool:
    name = getattr(func, "__name__", "")
    return name == "__setitem__" or (name.endswith("_") and not name.endswith("__") and name not in _NOT_WRITES)


def refuse_writes(func, args, kwargs) -> None:
    """RuntimeError when ``func`` would write into a weight view among ``args`` / ``kwargs``."""
    from .torch_compat import DequantizedWeightView  # (torch_compat imports this module)

    out = kwargs.get("out")
    outs = out if isinstance(out, (tuple, list)) else (out,)
    written = (args[0] if args and _in_place(func) else None,) + tuple(outs)
    if any(isinstance(t, DequantizedWeightView) for t in written):
        raise RuntimeError(
            f"{getattr(func, '__name__', func)} would write into a quantized layer's .weight, a read-only view "
            f"dequantized on use (the write would be lost): change the float model and quantize it again, or "
            f"give the layer a new weight with layer.set_weight(mono_quant.quantize_weight(...))")
