"""QuantizedWeight: an integer tensor with its scale, zero-point and axis.

Plain int8 / uint8 storage (never torch's deprecated quantized dtypes), so it
saves, moves and copies like any tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch

from . import kernels
from .errors import ConfigError, NonFiniteWeightError
from .int_options import as_int
from .orig_dtype import check_orig_dtype, orig_dtype_of
from .qtypes import QType, get_qtype

__all__ = ["QuantizedWeight", "channel_rows", "from_channel_rows", "quantize_int_with_error", "check_input",
           "no_data_reason", "sqnr_db",
           "error_powers", "raise_if_dequantize_overflows", "NonFiniteWeightError"]


@dataclass
class QuantizedWeight:
    """An affine-quantized tensor: ``w ~= (qdata - zero_point) * scale``.

    What :func:`~mono_quant.quantize_weight` returns for int8 / uint8 (int4
    gives its subclass :class:`~mono_quant.Int4Weight`).  ``shape`` is the
    original shape.

    Args:
        qdata: The integer codes, the original shape (``torch.int8`` or ``torch.uint8``).
        scale: float32, one entry per channel along ``axis`` (one in all when ``axis`` is None).
        zero_point: int32, shaped as ``scale`` (zeros for a symmetric weight).
        axis: The channel axis, or None for one scale for the whole tensor.
        dtype: The QType name ("int8", "uint8", "int4").
        symmetric: Whether the range is symmetric around 0 (zero-point 0).
        orig_dtype: The floating dtype the weight stands for: float32, float16, bfloat16 or float64
            (ConfigError for another; a float8 weight stands for float32).

    Examples:
        >>> qw = mq.quantize_weight(torch.randn(64, 32), "int8")
        >>> qw.qdata.dtype, qw.scale.shape, qw.axis
        (torch.int8, torch.Size([64]), 0)
        >>> w = qw.dequantize()   # float32, shape [64, 32]
    """

    qdata: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    axis: Optional[int]
    dtype: str
    symmetric: bool
    orig_dtype: torch.dtype = torch.float32
    # packing.pack_int8_linear's last result for this weight: a weight tied between
    # layers is one QuantizedWeight, so they share one packed copy too
    packed_memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.orig_dtype = check_orig_dtype(self.orig_dtype)

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
        rows = channel_rows(self.qdata, self.axis)
        out = kernels.dequantize_rows(rows, self.scale, self.zero_point)
        return from_channel_rows(out, self.qdata.shape, self.axis).to(dtype)

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


def channel_rows(t: torch.Tensor, axis: Optional[int]) -> torch.Tensor:
    """View (or copy, for axis != 0) a tensor as [channels, elements per channel]."""
    # explicit sizes, not -1: reshape can't infer a dimension of an empty tensor
    if axis is None:
        return t.reshape(1, t.numel()) if t.dim() < 2 else t.reshape(t.shape[0], math.prod(t.shape[1:]))
    if axis != 0:
        t = t.movedim(axis, 0)
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def from_channel_rows(rows: torch.Tensor, shape: torch.Size, axis: Optional[int]) -> torch.Tensor:
    if axis is None or axis == 0:
        return rows.reshape(shape)
    moved = list(shape)
    moved.insert(0, moved.pop(axis))
    return rows.reshape(moved).movedim(0, axis).contiguous()


def no_data_reason(tensor: torch.Tensor, what: str = "weight") -> Optional[str]:
    """Why a weight has no values the kernels can read (None when it has): on the meta device, or
    sparse (they read dense rows).  quantize() skips such a layer with this reason."""
    if tensor.device.type == "meta":
        return f"{what} is on the meta device (no data to quantize)"
    if tensor.layout != torch.strided:
        return (f"{what} is a sparse tensor ({str(tensor.layout).replace('torch.', '')}): quantize its dense form "
                f"(.to_dense())")
    return None


def check_input(tensor: torch.Tensor, axis: Optional[int]) -> Tuple[torch.Tensor, Optional[int]]:
    """quantize_weight's checks of its tensor and axis: the tensor as the kernels take it, the axis normalized."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"quantize_weight() takes a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"quantize_weight() takes a floating-point tensor, got dtype {tensor.dtype}")
    no_data = no_data_reason(tensor)
    if no_data is not None:
        raise ValueError(f"quantize_weight(): {no_data}")
    if tensor.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        tensor = tensor.float()  # float64 and friends: fp32 is what the quantized grid resolves anyway
    if axis is not None:
        given, axis = axis, as_int(axis)  # (np.int64(0) is an axis too; True is not)
        if axis is None:
            raise TypeError(f"axis must be an int or None, got {given!r}")
        if tensor.dim() == 0:
            raise ConfigError("a 0-d tensor has no channel axis: pass axis=None")
        if not -tensor.dim() <= axis < tensor.dim():
            raise ConfigError(f"axis {axis} is out of range for a {tensor.dim()}-D tensor")
        axis %= tensor.dim()
    return tensor, axis


def quantize_int_with_error(tensor: torch.Tensor, qtype: QType, axis: Optional[int], symmetric: bool,
                            with_error: bool):
    """quantize_weight on a checked input; also returns the SQNR in dB (None
    unless ``with_error``), measured in the same pass over each channel."""
    qmin, qmax = qtype.qrange(symmetric)
    rows = channel_rows(tensor.detach(), axis)
    if axis is None:
        mn, mx, bad = kernels.rows_minmax(rows)
        _raise_if_bad(bad, None)
        lo = mn.min().reshape(1) if mn.numel() else torch.zeros(1)
        hi = mx.max().reshape(1) if mx.numel() else torch.zeros(1)
        scale, zero_point = kernels.choose_qparams(lo, hi, qmin, qmax, symmetric)
        q = kernels.quantize_rows(rows, scale, zero_point, qmin, qmax, use_fma=kernels.per_tensor_uses_fma())
        raise_if_dequantize_overflows(rows, scale, zero_point, qmin, qmax, None)
        sx, se = kernels.rows_sqerr(rows, q, scale, zero_point) if with_error else (None, None)
    else:
        q, scale, zero_point, bad, sx, se = kernels.quantize_rows_fused(rows, qmin, qmax, symmetric, with_error)
        _raise_if_bad(bad, axis)
        raise_if_dequantize_overflows(rows, scale, zero_point, qmin, qmax, axis)
    device = tensor.device
    qw = QuantizedWeight(
        from_channel_rows(q, tensor.shape, axis).to(device), scale.to(device), zero_point.to(device),
        axis, qtype.name, symmetric, orig_dtype_of(tensor.dtype),
    )
    if not with_error:
        return qw, None
    return qw, sqnr_db(*error_powers(rows, sx, se, qmin, qmax, symmetric, q, scale, zero_point))


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """10 log10(signal / noise); +inf for an exact reconstruction, 0 dB for an all-zero signal with
    error, NaN when a power is NaN or Inf (an overflowed sum: unknown, never a made-up figure)."""
    if not (math.isfinite(signal_power) and math.isfinite(noise_power)):
        return math.nan
    if noise_power <= 0.0:
        return math.inf
    if signal_power <= 0.0:
        return 0.0
    # a difference of logs: the ratio of two far-apart float64 powers may over- or underflow
    return 10.0 * (math.log10(signal_power) - math.log10(noise_power))


def error_powers(rows: torch.Tensor, sum_x2: torch.Tensor, sum_err2: torch.Tensor, qmin: int, qmax: int,
                 symmetric: bool, q: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                 zero_point: Optional[torch.Tensor] = None) -> Tuple[float, float]:
    """The signal and noise powers of quantized ``rows`` from the kernels' per-row sums.

    The kernels' sums are finite for finite rows at every level (a SIMD level sums a row
    whose float32 squares overflow, weights beyond about 1.8e19, again in float64); a
    non-finite sum all the same (a kernel level without that) is measured again by the
    pure-torch reference (float64 squares of the same float32 error), a safety net.
    ``q`` / ``scale`` / ``zero_point``: the codes and qparams when known; without them
    (per-channel only) the reference quantizes the rows again, to the same codes."""
    bad = ~(torch.isfinite(sum_x2) & torch.isfinite(sum_err2))
    if bool(bad.any()):
        idx = bad.nonzero().flatten()
        x = rows[idx.to(rows.device)].cpu()
        if q is None:
            _, _, _, _, sx, se = kernels.reference.quantize_rows_fused(x, qmin, qmax, symmetric, True)
        else:
            if scale.numel() != 1:  # per-channel: these rows' qparams
                scale, zero_point = scale[idx], zero_point[idx]
            sx, se = kernels.reference.rows_sqerr(x, q[idx.to(q.device)].cpu(), scale.cpu(), zero_point.cpu())
        sum_x2, sum_err2 = sum_x2.clone(), sum_err2.clone()
        sum_x2[idx], sum_err2[idx] = sx.to(sum_x2.dtype), se.to(sum_err2.dtype)
    return float(sum_x2.sum()), float(sum_err2.sum())


def raise_if_dequantize_overflows(rows: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                                  qmin: int, qmax: int, axis: Optional[int] = 0) -> None:
    """Refuse a weight whose extreme codes dequantize to Inf in float32: ``(q - zero_point) * scale``
    overflows for weights at float32's limit (3.4e38), and the layer would compute with Inf."""
    zp = zero_point.to("cpu", torch.float32)
    reach = torch.maximum((qmax - zp).abs(), (qmin - zp).abs()) * scale.to("cpu", torch.float32)
    over = torch.isinf(reach)
    if not bool(over.any()):
        return
    amax = rows.float().abs().amax(1)
    row = int(over.nonzero()[0]) if over.numel() > 1 else int(amax.argmax())  # one scale: the largest row
    big = float(amax[row])
    what = f"values at float32's limit (|w| up to {big:.4g}: the integer codes would dequantize to Inf)"
    where = "the tensor" if axis is None else f"channel {row} (axis {axis})"
    raise NonFiniteWeightError(f"weight holds {what} in {where}", row, what=what)


def _raise_if_bad(bad: int, axis: Optional[int]) -> None:
    if bad >= 0:
        where = "the tensor" if axis is None else f"channel {bad} (axis {axis})"
        raise NonFiniteWeightError(f"weight holds NaN or Inf in {where}; fix or exclude it", bad)
