"""QuantizedWeight: an integer tensor with its scale, zero-point and axis.

Plain int8 / uint8 storage (never torch's deprecated quantized dtypes), so it
saves, moves and copies like any tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from . import kernels
from .errors import NonFiniteWeightError
from .qtypes import QType, get_qtype

__all__ = ["QuantizedWeight", "quantize_weight", "quantize_int_with_error", "sqnr_db", "NonFiniteWeightError"]


@dataclass
class QuantizedWeight:
    """An affine-quantized tensor: ``w ~= (qdata - zero_point) * scale``.

    ``axis`` is the channel axis (``None`` for one scale for the whole
    tensor); ``scale`` (float32) and ``zero_point`` (int32) have one entry per
    channel along it.  ``shape`` is the original shape, ``dtype`` the QType
    name, ``orig_dtype`` the floating dtype it came from.
    """

    qdata: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    axis: Optional[int]
    dtype: str
    symmetric: bool
    orig_dtype: torch.dtype = torch.float32

    @property
    def shape(self) -> torch.Size:
        return self.qdata.shape

    @property
    def qtype(self) -> QType:
        return get_qtype(self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of storage: data plus scales and zero-points."""
        return sum(t.numel() * t.element_size() for t in (self.qdata, self.scale, self.zero_point))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float tensor this stands for, in ``dtype`` (float32 by default)."""
        rows = _as_rows(self.qdata, self.axis)
        out = kernels.dequantize_rows(rows, self.scale, self.zero_point)
        return _from_rows(out, self.qdata.shape, self.axis).to(dtype)

    def to(self, device) -> "QuantizedWeight":
        return QuantizedWeight(
            self.qdata.to(device), self.scale.to(device), self.zero_point.to(device),
            self.axis, self.dtype, self.symmetric, self.orig_dtype,
        )

    def __repr__(self) -> str:
        return (
            f"QuantizedWeight(dtype={self.dtype}, shape={tuple(self.shape)}, axis={self.axis}, "
            f"symmetric={self.symmetric})"
        )


def _as_rows(t: torch.Tensor, axis: Optional[int]) -> torch.Tensor:
    """View (or copy, for axis != 0) a tensor as [channels, elements per channel]."""
    # explicit sizes, not -1: reshape can't infer a dimension of an empty tensor
    if axis is None:
        return t.reshape(1, t.numel()) if t.dim() < 2 else t.reshape(t.shape[0], math.prod(t.shape[1:]))
    if axis != 0:
        t = t.movedim(axis, 0)
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def _from_rows(rows: torch.Tensor, shape: torch.Size, axis: Optional[int]) -> torch.Tensor:
    if axis is None or axis == 0:
        return rows.reshape(shape)
    moved = list(shape)
    moved.insert(0, moved.pop(axis))
    return rows.reshape(moved).movedim(0, axis).contiguous()


def _check_input(tensor: torch.Tensor, axis: Optional[int]) -> Tuple[torch.Tensor, Optional[int]]:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"quantize_weight() takes a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"quantize_weight() takes a floating-point tensor, got dtype {tensor.dtype}")
    if tensor.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        tensor = tensor.float()  # float64 and friends: fp32 is what the quantized grid resolves anyway
    if axis is not None:
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise TypeError(f"axis must be an int or None, got {axis!r}")
        if tensor.dim() == 0:
            raise ValueError("a 0-d tensor has no channel axis: pass axis=None")
        if not -tensor.dim() <= axis < tensor.dim():
            raise ValueError(f"axis {axis} is out of range for a {tensor.dim()}-D tensor")
        axis %= tensor.dim()
    return tensor, axis


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
        A :class:`QuantizedWeight` (an ``Int4Weight`` for int4).

    Raises:
        TypeError: A non-tensor or non-float input.
        ValueError: An unknown or non-integer dtype, a bad axis or group size.
        NonFiniteWeightError: The tensor holds NaN/Inf (a ``ValueError``).

    Examples:
        >>> qw = mq.quantize_weight(linear.weight, "int8", axis=0, symmetric=True)
        >>> w = qw.dequantize()
    """
    qtype = get_qtype(dtype)
    if qtype.name == "int4":
        from .int4 import quantize_int4  # int4 builds on this module

        if axis != 0:
            raise ValueError(f"int4 weights are grouped along the input dimension with axis=0, got axis={axis!r}")
        return quantize_int4(tensor, group_size=group_size, symmetric=bool(symmetric), method=method)[0]
    if method not in (None, "rtn"):
        raise ValueError(f"method={method!r} applies to int4 only; {qtype.name} uses round-to-nearest ('rtn')")
    if qtype.kind != "int":
        raise ValueError(
            f"quantize_weight() makes integer formats; for {qtype.name} cast the tensor "
            f"(tensor.to({qtype.storage})) or use quantize(model, dtype={qtype.name!r})"
        )
    if group_size is not None:
        raise ValueError(f"group_size is not supported for {qtype.name} (per-channel or per-tensor only)")
    tensor, axis = _check_input(tensor, axis)
    return quantize_int_with_error(tensor, qtype, axis, bool(symmetric), with_error=False)[0]


def quantize_int_with_error(tensor: torch.Tensor, qtype: QType, axis: Optional[int], symmetric: bool,
                            with_error: bool):
    """quantize_weight on a checked input; also returns the SQNR in dB (None
    unless ``with_error``), measured in the same pass over each channel."""
    qmin, qmax = qtype.qrange(symmetric)
    rows = _as_rows(tensor.detach(), axis)
    if axis is None:
        mn, mx, bad = kernels.rows_minmax(rows)
        _raise_if_bad(bad, None)
        lo = mn.min().reshape(1) if mn.numel() else torch.zeros(1)
        hi = mx.max().reshape(1) if mx.numel() else torch.zeros(1)
        scale, zero_point = kernels.choose_qparams(lo, hi, qmin, qmax, symmetric)
        q = kernels.quantize_rows(rows, scale, zero_point, qmin, qmax, use_fma=kernels.per_tensor_uses_fma())
        sx, se = kernels.rows_sqerr(rows, q, scale, zero_point) if with_error else (None, None)
    else:
        q, scale, zero_point, bad, sx, se = kernels.quantize_rows_fused(rows, qmin, qmax, symmetric, with_error)
        _raise_if_bad(bad, axis)
    device = tensor.device
    qw = QuantizedWeight(
        _from_rows(q, tensor.shape, axis).to(device), scale.to(device), zero_point.to(device),
        axis, qtype.name, symmetric, tensor.dtype,
    )
    return qw, (sqnr_db(float(sx.sum()), float(se.sum())) if with_error else None)


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """10 log10(signal / noise); +inf for an exact reconstruction, 0 dB for an all-zero signal with error."""
    if noise_power <= 0.0:
        return math.inf
    if signal_power <= 0.0:
        return 0.0
    return 10.0 * math.log10(signal_power / noise_power)


def _raise_if_bad(bad: int, axis: Optional[int]) -> None:
    if bad >= 0:
        where = "the tensor" if axis is None else f"channel {bad} (axis {axis})"
        raise NonFiniteWeightError(f"weight holds NaN or Inf in {where}; fix or exclude it", bad)
