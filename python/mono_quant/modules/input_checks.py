"""Checks every quantized layer makes of its input before any kernel sees it."""
from __future__ import annotations

import torch

__all__ = ["check_float_input"]


def check_float_input(x: torch.Tensor, layer: str) -> None:
    """Raise RuntimeError for a non-floating input, as the float layer does (the
    kernels would otherwise convert integers and return a result the float model never gives)."""
    if not x.is_floating_point():
        raise RuntimeError(f"{layer}: expected a floating-point input, got {x.dtype} (the float layer raises "
                           f"for it too); convert it first, e.g. x.float()")
