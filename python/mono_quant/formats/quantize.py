"""``quantize_weight()``: one tensor to an integer format, asking the format object."""
from __future__ import annotations

from typing import Optional

import torch

from ..tensor import QuantizedWeight
from .registry import get_format

__all__ = ["quantize_weight"]


def quantize_weight(
    tensor: torch.Tensor,
    dtype="int8",
    *,
    axis: Optional[int] = 0,
    group_size: Optional[int] = None,
    symmetric: bool = False,
    method: Optional[str] = None,
) -> QuantizedWeight:
    """Quantize a tensor to an integer type, per channel along ``axis`` (or per tensor with ``axis=None``).

    INT8 results are bit-identical to ``torch.quantize_per_channel`` (per
    tensor: ``torch.quantize_per_tensor``) with the same scale and
    zero-point.  Scales follow torch's MinMaxObserver (see docs/formats.md).
    The input is never modified.

    Args:
        tensor: A floating-point tensor.
        dtype: "int8", "uint8" or "int4" (or the torch dtype).
        axis: The channel axis (one scale per channel), or None for one
            scale for the whole tensor.  int4 needs 0 (output channels first).
        group_size: int4 only: columns per group along the input dimension
            (a positive multiple of 32), or None for one group per output channel.
        symmetric: Symmetric range (zero-point 0) instead of min/max.
        method: int4 only: "rtn", "mse" (default) or "hqq".

    Returns:
        A :class:`~mono_quant.QuantizedWeight` (an ``Int4Weight`` for int4).

    Raises:
        TypeError: A non-tensor or non-float input, or a ``symmetric`` that is not a bool.
        ConfigError: An unknown or non-integer dtype, a bad axis, group size or method (a ``ValueError``).
        NonFiniteWeightError: The tensor holds NaN/Inf (a ``ValueError``).

    Examples:
        >>> qw = mq.quantize_weight(linear.weight, "int8", axis=0, symmetric=True)
        >>> w = qw.dequantize()
    """
    if not isinstance(symmetric, bool):  # ("no" is truthy: it gave symmetric weights)
        raise TypeError(f"symmetric must be True or False, got {symmetric!r}")
    return get_format(dtype).quantize_weight(tensor, axis=axis, group_size=group_size, symmetric=symmetric,
                                             method=method)
