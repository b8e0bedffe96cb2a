"""The dtypes a quantized weight may stand for: its ``orig_dtype``, what a quantized module's
``.weight`` reports and what its dequantized weight and an embedding lookup return.

Only float dtypes torch computes in: float32, float16, bfloat16, float64.  A float8 weight
(``torch.float8_e4m3fn`` and friends: a storage dtype, no matmul or conv on the CPU) is
quantized from its values, which float32 holds exactly, and stands for float32.  This module
imports nothing from the package: every layer checks with it.
"""
from __future__ import annotations

import torch

from .errors import ConfigError

__all__ = ["ORIG_DTYPES", "check_orig_dtype", "orig_dtype_of"]

ORIG_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
"""The dtypes a quantized weight may stand for, the default first."""

_NAMES = ", ".join(str(d).replace("torch.", "") for d in ORIG_DTYPES)


def check_orig_dtype(value, what: str = "orig_dtype", hint: str = "") -> torch.dtype:
    """``value`` (a torch dtype, or its name: "bfloat16", "torch.bfloat16") as a torch dtype
    when it is one of :data:`ORIG_DTYPES`.  Raises ConfigError (a ValueError) naming
    ``what``, the value and the dtypes accepted otherwise, ``hint`` (what to do) appended."""
    dtype = value
    if isinstance(value, str):
        dtype = getattr(torch, value[len("torch."):] if value.startswith("torch.") else value, None)
    if dtype not in ORIG_DTYPES:
        if not hint and isinstance(dtype, torch.dtype) and dtype.is_floating_point:
            hint = "; a float8 model's weights stand for float32 once quantized (quantize() records that)"
        raise ConfigError(f"{what} {value!r} is not one of {_NAMES} (the dtypes a quantized weight "
                          f"can stand for){hint}")
    return dtype


def orig_dtype_of(weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype a float weight of ``weight_dtype`` stands for once quantized: itself, or
    float32 for a float8 (or other storage-only float) weight.  Raises ConfigError for a
    dtype that is not floating point."""
    if weight_dtype in ORIG_DTYPES:
        return weight_dtype
    if isinstance(weight_dtype, torch.dtype) and weight_dtype.is_floating_point:
        return torch.float32
    return check_orig_dtype(weight_dtype, "weight dtype")
