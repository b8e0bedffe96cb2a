"""INT4 group-wise weights: the Int4Weight type, quantize_int4(), dequantization
and the weight-only linear op, over the C kernels (``csrc/int4.c``).

Format (docs/formats.md, "INT4"): a weight is seen as rows = output channels
by columns = the flattened input dimension (the reduction axis), cut into
groups of ``group_size`` columns (rows are zero-padded to a multiple of 32
columns, so the last group may be shorter).  Each group has an fp16
``scale`` and a u4.4 fixed-point ``zero_point`` (uint8, the zero
in 1/16 quantization steps): ``w = (code - zero_point / 16) * scale`` with
4-bit codes packed two per byte, 32 codes per 16-byte block, byte ``j`` of a
block holding code ``j`` (low nibble) and code ``j + 16`` (high nibble).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..errors import ConfigError, NonFiniteWeightError
from ..int_options import as_int
from ..orig_dtype import orig_dtype_of
from ..kernels import SETTINGS
from ..kernels import int4 as q4
from ..kernels.row_rules import INT4_BLAS_MAX_OUT_FEATURES, INT4_BLAS_MIN_ROWS, int4_takes_blas
from ..kernels.layout import INT4_BLOCK, int4_padded_cols
from ..kernels.reference import q4_dequantize
from ..tensor import QuantizedWeight, no_data_reason, sqnr_db

__all__ = [
    "MAX_GROUP_SIZE",
    "Int4Weight",
    "quantize_int4",
    "quantize_int4_rows",
    "int4_linear",
    "unpack_int4",
    "INT4_METHODS",
    "DEFAULT_INT4_METHOD",
    "DEFAULT_INT4_GROUP_SIZE",
    "effective_group",
    "set_int8_activations",
    "check_group_size",
    "check_method",
    "BLAS_MIN_ROWS",
    "BLAS_MAX_OUT_FEATURES",
]

#: Rounding methods: plain round-to-nearest; an MSE-optimal range search per
#: group (shrunk / shifted ranges, never worse than RTN); the MSE search
#: followed by HQQ's half-quadratic zero-point refinement (never worse than MSE).
INT4_METHODS = ("rtn", "mse", "hqq")
DEFAULT_INT4_METHOD = "mse"  # ~10 s per billion weights; hqq ~6x slower for a few hundredths of a dB
DEFAULT_INT4_GROUP_SIZE = 128


def effective_group(cols: int, group_size: Optional[int]) -> int:
    """Columns per group: ``group_size``, or the whole (block-padded) row for per-channel (None)."""
    if group_size is None:
        return max(INT4_BLOCK, int4_padded_cols(cols))
    return group_size


#: The largest group the C kernels take (mq_q4_check_group): 2^30 columns.
MAX_GROUP_SIZE = 1 << 30


def check_group_size(group_size) -> Optional[int]:
    """Validate a group size: None (per-channel) or a positive multiple of 32 (any integer
    type: ``np.int64(64)`` too; not a bool or a float).  Returns it as a Python int."""
    if group_size is None:
        return None
    size = as_int(group_size)
    if size is None or size <= 0 or size % INT4_BLOCK or size > MAX_GROUP_SIZE:
        raise ConfigError(f"int4 group_size must be a positive multiple of {INT4_BLOCK} (32, 64, 128, 256, ...) "
                         f"up to {MAX_GROUP_SIZE} (2^30), or "
                         f"None for one group per output channel, got {group_size!r}")
    return size


def check_method(method) -> str:
    """Validate an int4 method name; None gives the default ("mse")."""
    if method is None:
        return DEFAULT_INT4_METHOD
    if method not in INT4_METHODS:
        raise ConfigError(f"int4 method must be one of {INT4_METHODS}, got {method!r}")
    return method


@dataclass
class Int4Weight(QuantizedWeight):
    """A group-wise int4 weight: two 4-bit codes per byte, one fp16 scale and
    one zero-point per group of ``group_size`` columns (docs/formats.md has the
    bytes).  What :func:`~mono_quant.quantize_weight` returns for ``"int4"``.

    Args:
        qdata: uint8 ``[rows, padded_cols / 2]``: packed codes, rows zero-padded to a multiple of 32 columns.
        scale: float16 ``[rows, groups]``.
        zero_point: uint8 ``[rows, groups]``, u4.4 fixed point.
        axis: Always 0 (groups run along the input dimension of each output row).
        dtype: "int4".
        symmetric: Whether the codes are symmetric (-7..7 around code 8).
        orig_dtype: The floating dtype the weight stands for (see :class:`~mono_quant.QuantizedWeight`).
        group_size: Columns per group, or None for one group per output row.
        orig_shape: The float weight's shape (``shape`` returns it).

    Examples:
        >>> qw = mq.quantize_weight(torch.randn(64, 256), "int4", group_size=128)
        >>> qw.shape, qw.qdata.shape, qw.scale.shape
        (torch.Size([64, 256]), torch.Size([64, 128]), torch.Size([64, 2]))
        >>> w = qw.dequantize()
    """

    group_size: Optional[int] = None
    orig_shape: Tuple[int, ...] = field(default_factory=tuple)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.orig_shape)

    @property
    def cols(self) -> int:
        return math.prod(self.orig_shape[1:])

    @property
    def group(self) -> int:
        return effective_group(self.cols, self.group_size)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight of ``orig_shape`` in ``dtype``."""
        if math.prod(self.orig_shape) == 0:
            return torch.zeros(self.orig_shape, dtype=dtype, device=self.qdata.device)
        if self.qdata.device.type == "cpu":
            out = q4.q4_dequantize(self.qdata, self.scale, self.zero_point, self.cols, self.group)
        else:
            out = unpack_int4(self.qdata, self.scale, self.zero_point, self.cols, self.group)
        return out.reshape(self.orig_shape).to(dtype)

    def to(self, device) -> "Int4Weight":
        return Int4Weight(self.qdata.to(device), self.scale.to(device), self.zero_point.to(device), self.axis,
                          self.dtype, self.symmetric, self.orig_dtype, self.group_size, tuple(self.orig_shape))

    def __repr__(self) -> str:
        return (f"Int4Weight(shape={tuple(self.orig_shape)}, group_size={self.group_size}, "
                f"symmetric={self.symmetric})")


#: Pure-torch dequantization of the int4 format (any device): float32 ``[rows, cols]``.
#: The oracle for the C kernel and the fallback off the CPU (``kernels.reference.q4_dequantize``).
unpack_int4 = q4_dequantize


def quantize_int4(tensor: torch.Tensor, *, group_size: Optional[int] = DEFAULT_INT4_GROUP_SIZE,
                  symmetric: bool = False, method: Optional[str] = None, with_error: bool = False):
    """Quantize a weight (output channels first: ``[out, in]`` or ``[out, in, kh, kw]``)
    to group-wise int4 along the flattened input dimension.

    ``group_size``: a positive multiple of 32, or None for one group per output
    channel.  ``symmetric``: codes -7..7 (zero-point 8) instead of the default
    asymmetric 0..15 with a per-group zero-point.  ``method``: "rtn", "mse"
    (default) or "hqq" (see INT4_METHODS).

    Returns ``(Int4Weight, sqnr_db or None)``.  The input is never modified.
    Raises ``TypeError`` for a non-float tensor, ``ValueError`` for bad options
    or a 0-/1-D tensor, ``NonFiniteWeightError`` on NaN/Inf.
    """
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise TypeError(f"int4 quantization takes a floating-point torch.Tensor, got "
                        f"{getattr(tensor, 'dtype', type(tensor).__name__)}")
    no_data = no_data_reason(tensor)
    if no_data is not None:
        raise ValueError(f"int4 quantization: {no_data}")
    if tensor.dim() < 2:
        raise ValueError(f"int4 quantization takes a weight with >= 2 dims (out, in, ...), "
                         f"got shape {tuple(tensor.shape)}")
    group_size = check_group_size(group_size)
    method = check_method(method)
    w = tensor.detach()
    orig_dtype, device = orig_dtype_of(w.dtype), w.device
    if w.numel() == 0:  # an empty layer: empty tensors of the format's shapes (as torch quantizes empty tensors)
        return _empty_int4(tuple(tensor.shape), group_size, bool(symmetric), orig_dtype, device), math.inf
    if w.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        w = w.float()
    rows = w.reshape(w.shape[0], -1).to("cpu").contiguous()
    packed, scale, zero, sx, se = quantize_int4_rows(rows, group_size, symmetric, method, with_error)
    qw = Int4Weight(packed.to(device), scale.to(device), zero.to(device),
                    0, "int4", bool(symmetric), orig_dtype, group_size, tuple(tensor.shape))
    return qw, (sqnr_db(float(sx.sum()), float(se.sum())) if with_error else None)


def _empty_int4(shape, group_size: Optional[int], symmetric: bool, orig_dtype, device) -> "Int4Weight":
    rows, cols = shape[0], math.prod(shape[1:])
    kpad = int4_padded_cols(cols)
    groups = -(-kpad // effective_group(cols, group_size))
    return Int4Weight(torch.zeros(rows, kpad // 2, dtype=torch.uint8, device=device),
                      torch.ones(rows, groups, dtype=torch.float16, device=device),
                      torch.full((rows, groups), 128 if symmetric else 0, dtype=torch.uint8, device=device),
                      0, "int4", symmetric, orig_dtype, group_size, tuple(shape))


def quantize_int4_rows(rows: torch.Tensor, group_size: Optional[int], symmetric: bool, method: str,
                       with_error: bool):
    """The C kernel over a contiguous 2-D CPU tensor of rows (float32 / float16 / bfloat16):
    ``(packed uint8 [rows, kpad/2], scale float16 [rows, groups], zero_point uint8 [rows, groups],
    sum_x2, sum_err2)`` (the per-row float64 error sums are None unless ``with_error``).  Rows
    are quantized independently, so a weight can go through in row ranges (checkpoints).
    Raises NonFiniteWeightError naming the first row holding NaN/Inf."""
    group = effective_group(rows.shape[1], group_size)
    packed, scale, zero, bad, sx, se = q4.q4_quantize(rows, group, symmetric, INT4_METHODS.index(method), with_error)
    if bad >= 0:
        raise NonFiniteWeightError(f"weight holds NaN or Inf in channel {bad} (axis 0); fix or exclude it", bad)
    _raise_if_scales_saturate(rows, scale, symmetric)
    return packed, scale, zero, sx, se


_FP16_MAX = 65504.0


def _raise_if_scales_saturate(rows: torch.Tensor, scale: torch.Tensor, symmetric: bool) -> None:
    """A group wider than 15 (asymmetric) or 7 (symmetric) x 65504 needs a scale beyond fp16: the
    kernel clamps it, and the group's large weights would come back clipped.  Raise instead,
    naming the first such row (checked only on rows whose scale reached the maximum)."""
    hit = (scale == _FP16_MAX).any(1)
    if not bool(hit.any()):
        return
    candidates = hit.nonzero().flatten()
    r = rows[candidates].float()
    span = r.abs().amax(1) if symmetric else r.amax(1).clamp(min=0) - r.amin(1).clamp(max=0)
    limit = (7 if symmetric else 15) * _FP16_MAX
    over = span > limit * (1 + 2 ** -10)  # beyond the fp16 rounding of the last scale step
    if bool(over.any()):
        row = int(candidates[over.nonzero()[0]])
        what = (f"values beyond int4's range (|w| up to {float(rows[row].float().abs().max()):.4g}; fp16 group "
                f"scales cover a span of {limit:.6g}{' with symmetric=True' if symmetric else ''}: use int8 or bf16)")
        raise NonFiniteWeightError(f"weight holds {what} in channel {row} (axis 0)", row, what=what)


# int4_linear dequantizes the whole weight once per call (the C kernel) and runs torch's
# BLAS instead of the packed kernels when x has at least BLAS_MIN_ROWS rows (x reshaped
# to 2-D) and the layer at most BLAS_MAX_OUT_FEATURES outputs, per kernel level, unless
# AMX runs its int8 activations (kernels/row_rules.int4_takes_blas; the traced op applies it too).
BLAS_MIN_ROWS = INT4_BLAS_MIN_ROWS
BLAS_MAX_OUT_FEATURES = INT4_BLAS_MAX_OUT_FEATURES


def set_int8_activations(enabled: bool) -> bool:
    """Allow (default) or forbid the int8-activation kernel; returns the previous setting.

    Where the group size is a multiple of 128 (up to 4096; a padded input size
    not of whole 128 columns from 2 rows on, through a copy of the weight in
    whole 128 columns) and the CPU has AVX2 or AVX-512 VNNI, int4_linear quantizes the
    activations to int8 per (row, group) (absmax scale) and uses integer dot
    products: up to ~2x faster than dequantizing to fp32 in registers, adding
    ~0.5% relative noise, well below int4 weight noise (~20 dB SQNR).
    Disabled (or on the scalar level), every batch uses fp32 activations.
    A thin alias of ``kernels.SETTINGS.set_int4_int8_activations`` (tests: ``SETTINGS.for_tests``).
    """
    return SETTINGS.set_int4_int8_activations(enabled)


def int4_linear(x: torch.Tensor, weight: Int4Weight, bias: Optional[torch.Tensor] = None,
                int8_activations: bool = True) -> torch.Tensor:
    """``x @ W.T + bias`` for an int4 weight of shape ``[out, in]``, in x's dtype.

    On the CPU with float32 / bfloat16 activations this streams the packed
    weight through the C kernels (other float dtypes go through float32): with
    int8 activations and integer dot products where the CPU has AVX2 or VNNI
    (see set_int8_activations; ``int8_activations=False``: a weight-only layer's
    call), else dequantized to fp32 in registers; elsewhere it dequantizes with
    torch and uses F.linear.
    """
    int8_activations = bool(int8_activations) and SETTINGS.int4_int8_activations
    out_features, in_features = weight.orig_shape[0], weight.cols
    if x.shape[-1] != in_features:
        # (RuntimeError, as F.linear raises for the other formats' layers)
        raise RuntimeError(f"input has {x.shape[-1]} features, the int4 weight expects {in_features}")
    if x.device.type != "cpu" or weight.qdata.device.type != "cpu" or x.numel() == 0 or weight.qdata.numel() == 0:
        # off the CPU, or nothing for the kernels to do (empty input or weight): torch on the float weight
        w = weight.dequantize(torch.float32).reshape(out_features, in_features).to(x.device)
        b = None if bias is None else bias.float()
        return F.linear(x.float(), w, b).to(x.dtype)
    x2 = x.detach().reshape(-1, in_features)
    if int4_takes_blas(x2.shape[0], out_features, weight.qdata.shape[-1] * 2, weight.group, SETTINGS.isa,
                       int8_activations, in_features=in_features):
        b = None if bias is None else bias.detach().float()
        y = F.linear(x2.float(), weight.dequantize(torch.float32), b)
        return y.reshape(*x.shape[:-1], out_features).to(x.dtype)
    if x2.dtype not in q4.Q4_ACTIVATION_DTYPES:
        x2 = x2.float()
    y = q4.q4_linear(x2.contiguous(), weight.qdata, weight.scale, weight.zero_point, weight.group, bias,
                     int8_activations)
    return y.reshape(*x.shape[:-1], out_features).to(x.dtype)
