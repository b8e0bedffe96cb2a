"""Pure-torch twins of the C kernels wrapped in :mod:`mono_quant.kernels`: same names, same results.

They are the test oracles for the C kernels and the fallback for tensors the
C kernels cannot take (CUDA, other devices).  Written for clarity, not speed.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .layout import INT4_BLOCK, INT8_K_GROUP, INT8_PANEL_ROWS, round_up, unpack_int8_rows

__all__ = ["rows_minmax", "choose_qparams", "quantize_rows", "quantize_rows_fused", "rows_sqerr", "dequantize_rows",
           "quantize_activations", "linear_int8", "conv2d_int8", "pack_int8", "quantize_pack_int8", "packed_check",
           "dequantize_packed_int8",
           "q4_dequantize", "q4_linear", "half_linear"]

_FLT_MIN = torch.finfo(torch.float32).tiny


def rows_minmax(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int]:
    x = x.float()
    finite = torch.isfinite(x)
    bad_rows = (~finite).any(dim=1).nonzero()
    bad = int(bad_rows[0]) if bad_rows.numel() else -1
    if x.shape[1] == 0:
        z = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        return z, z.clone(), bad
    mn = torch.where(finite, x, torch.full_like(x, float("inf"))).amin(dim=1)
    mx = torch.where(finite, x, torch.full_like(x, float("-inf"))).amax(dim=1)
    mn = torch.where(mn > mx, torch.zeros_like(mn), mn)
    mx = torch.where(mn > mx, torch.zeros_like(mx), mx)
    if bad >= 0:
        nan = torch.tensor(float("nan"), device=x.device)
        rows = (~finite).any(dim=1)
        mn, mx = torch.where(rows, nan, mn), torch.where(rows, nan, mx)
    return mn, mx, bad


def choose_qparams(mn: torch.Tensor, mx: torch.Tensor, qmin: int, qmax: int, symmetric: bool):
    """torch MinMaxObserver's formula in float32, scale floored at FLT_MIN (1 for an all-zero row)."""
    mn = mn.float()
    mx = mx.float()
    min_neg = torch.clamp(mn, max=0.0)
    max_pos = torch.clamp(mx, min=0.0)
    # The divisors are full tensors, not scalars: CUDA divides by a scalar as a multiplication by its
    # reciprocal, one rounding more (scales 1 ulp off the CPU's and torch's observers)
    if symmetric:
        amax = torch.maximum(-min_neg, max_pos)
        scale = amax / torch.full_like(amax, (qmax - qmin) / 2.0)
    else:
        span = torch.full_like(max_pos, float(qmax - qmin))
        scale = (max_pos - min_neg) / span
        scale = torch.where(torch.isinf(scale), max_pos / span - min_neg / span, scale)
    zero = (max_pos == 0) & (min_neg == 0)
    scale = torch.where(zero, torch.ones_like(scale), torch.clamp(scale, min=_FLT_MIN))
    if symmetric:
        zp = torch.full_like(scale, 0 if qmin < 0 else (qmin + qmax + 1) // 2, dtype=torch.int32)
    else:
        zp = torch.clamp(qmin - torch.round(min_neg / scale), qmin, qmax).to(torch.int32)
    return scale, zp


def quantize_rows(x, scale, zero_point, qmin: int, qmax: int, use_fma: bool = False) -> torch.Tensor:
    x = x.float()
    scale = scale.to(x.device, torch.float32).reshape(-1, 1)
    zp = zero_point.to(x.device, torch.float32).reshape(-1, 1)
    inv = 1.0 / scale
    if use_fma:  # one rounding of x * inv + zp: exact in float64 for these magnitudes
        v = (x.double() * inv.double() + zp.double()).float()
    else:
        v = zp + x * inv
    v = torch.round(v)
    v = torch.where(torch.isnan(v), torch.full_like(v, qmin), v).clamp(qmin, qmax)
    return v.to(torch.int8 if qmin < 0 else torch.uint8)


def quantize_rows_fused(x: torch.Tensor, qmin: int, qmax: int, symmetric: bool, with_error: bool = False):
    mn, mx, bad = rows_minmax(x)
    safe_mn = torch.nan_to_num(mn, nan=0.0)
    safe_mx = torch.nan_to_num(mx, nan=0.0)
    scale, zp = choose_qparams(safe_mn, safe_mx, qmin, qmax, symmetric)
    q = quantize_rows(x, scale, zp, qmin, qmax)
    if bad >= 0:
        scale = torch.where(torch.isnan(mn), torch.tensor(float("nan"), device=scale.device), scale)
    sx, se = rows_sqerr(x, q, scale, zp) if with_error else (None, None)
    return q, scale, zp, bad, sx, se


def rows_sqerr(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor):
    x = x.float()
    err = x - dequantize_rows(q, scale, zero_point)
    return (x.double() ** 2).sum(dim=1), (err.double() ** 2).sum(dim=1)


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    scale = scale.to(q.device, torch.float32).reshape(-1, 1)
    zp = zero_point.to(q.device, torch.float32).reshape(-1, 1)
    return (q.float() - zp) * scale


def quantize_activations(x2d: torch.Tensor, reduce_range: bool = False):
    """The dynamic kernels' activation integers of each row of ``x2d``: (xq, scale), xq
    int64 with ``x ~ xq * scale``.  Default: symmetric int8, -127..127.  ``reduce_range``:
    7 bits, asymmetric as torch's reduce_range: codes 0..127 with a per-row zero-point,
    xq = code - zero_point (-127..127); a row holding NaN/Inf gets xq 0 and scale NaN."""
    if not reduce_range:
        q, scale, _, _, _, _ = quantize_rows_fused(x2d, -127, 127, True)
        return q.long(), scale
    q, scale, zp, _, _, _ = quantize_rows_fused(x2d, 0, 127, False)
    xq = q.long() - zp.long().reshape(-1, 1)
    bad = torch.isnan(scale)
    return torch.where(bad.reshape(-1, 1), torch.zeros_like(xq), xq), scale


def linear_int8(x: torch.Tensor, qdata: torch.Tensor, w_scale: torch.Tensor, w_zero_point: torch.Tensor,
                bias=None, mode: str = "dynamic", reduce_range: bool = False) -> torch.Tensor:
    """Twin of ``kernels.linear_int8`` on the unpacked int8 weight ``qdata`` [out, in].

    "dynamic": x quantized per row (symmetric, -127..127), exact integer
    accumulation, then ``float(acc) * (x_scale * w_scale) + bias`` in fp32:
    the kernels' exact arithmetic.  "weight_only": ``x @ dequantized.T + bias``.
    "int8_acc": x is int8, returns the int32 ``x @ (qdata - zero_point).T``.
    ``reduce_range`` ("dynamic"): 7-bit activations (see ``quantize_activations``).
    """
    w = qdata.double() - w_zero_point.to(qdata.device).double().reshape(-1, 1)
    if mode == "int8_acc":
        return (x.double() @ w.T).to(torch.int32)  # float64 sums of int products: exact below 2**53
    x = x.float()
    if mode == "weight_only":
        y = x @ dequantize_rows(qdata, w_scale, w_zero_point).T
        return y if bias is None else y + bias.float()
    if mode != "dynamic":
        raise ValueError(f"mode must be 'dynamic', 'weight_only' or 'int8_acc', got {mode!r}")
    q, x_scale = quantize_activations(x, reduce_range)
    acc = q.double() @ w.T
    y = acc.float() * (x_scale.reshape(-1, 1) * w_scale.float().reshape(1, -1))
    return y if bias is None else y + bias.float()


def conv2d_int8(x: torch.Tensor, qdata: torch.Tensor, w_scale: torch.Tensor, w_zero_point: torch.Tensor, bias,
                stride, padding, dilation, groups: int, reduce_range: bool = False) -> torch.Tensor:
    """Twin of ``_C.conv2d_int8`` (dynamic int8 Conv2d), NCHW float32 out:
    each image quantized with one symmetric int8 scale (-127..127; 7 bits
    asymmetric with ``reduce_range``, see ``quantize_activations``), exact
    integer products and sums, then ``float(acc) * (x_scale * w_scale) + bias``."""
    batch = x.shape[0]
    q, x_scale = quantize_activations(x.float().reshape(batch, -1), reduce_range)
    w = qdata.double() - w_zero_point.to(qdata.device).double().reshape(-1, 1, 1, 1)
    acc = F.conv2d(q.double().reshape(x.shape), w, None, stride, padding, dilation, groups)  # exact below 2**53
    scale = x_scale.reshape(-1, 1, 1, 1) * w_scale.float().reshape(1, -1, 1, 1)
    y = acc.float() * scale
    return y if bias is None else y + bias.float().reshape(1, -1, 1, 1)


def pack_int8(q: torch.Tensor):
    """Twin of ``kernels.pack_int8``: an int8 weight [n, k] in panels of INT8_PANEL_ROWS
    channels, each holding its K in groups of INT8_K_GROUP bytes channel by channel
    (zero-padded); ``(packed int8 1-D, per-channel sums of the padded rows int32, has -128)``."""
    n, k = q.shape
    n_pad, k_pad = round_up(n, INT8_PANEL_ROWS), round_up(k, INT8_K_GROUP)
    rows = torch.zeros(n_pad, k_pad, dtype=torch.int8, device=q.device)
    rows[:n, :k] = q
    panels = rows.reshape(n_pad // INT8_PANEL_ROWS, INT8_PANEL_ROWS, k_pad // INT8_K_GROUP, INT8_K_GROUP)
    packed = panels.permute(0, 2, 1, 3).reshape(-1).contiguous()
    return packed, rows.to(torch.int32).sum(dim=1, dtype=torch.int32), bool((q == -128).any())


def quantize_pack_int8(x: torch.Tensor, qmin: int, qmax: int, symmetric: bool, with_error: bool = False):
    """Twin of ``kernels.quantize_pack_int8``: :func:`quantize_rows_fused` then :func:`pack_int8`;
    ``(packed, column sums, scale, zero_point, has_m128, bad_row, sum_x2, sum_err2)``."""
    q, s, z, bad, sx, se = quantize_rows_fused(x, qmin, qmax, symmetric, with_error)
    packed, w_sum, has_m128 = pack_int8(q.to(torch.int8))
    return packed, w_sum, s, z, has_m128, bad, sx, se


def packed_check(packed: torch.Tensor, n: int, k: int):
    """Twin of ``kernels.packed_check``: (per-channel sums of the packed bytes, some byte is
    -128, some padding byte is not 0) of packed int8 buffers of an [n, k] weight."""
    n_pad, k_pad = round_up(n, INT8_PANEL_ROWS), round_up(k, INT8_K_GROUP)
    panels = packed.reshape(n_pad // INT8_PANEL_ROWS, k_pad // INT8_K_GROUP, INT8_PANEL_ROWS, INT8_K_GROUP)
    rows = panels.permute(0, 2, 1, 3).reshape(n_pad, k_pad)
    padding = torch.ones_like(rows, dtype=torch.bool)
    padding[:n, :k] = False
    return (rows.to(torch.int32).sum(dim=1, dtype=torch.int32), bool((packed == -128).any()),
            bool((rows[padding] != 0).any()))


def dequantize_packed_int8(packed: torch.Tensor, groups: int, out_g: int, k: int, taps: int, scale: torch.Tensor,
                           zero_point: torch.Tensor) -> torch.Tensor:
    """Twin of ``kernels.dequantize_packed_int8`` (any device): float32 ``[groups * out_g, k]`` of a
    packed int8 weight of ``groups`` blocks, K reordered from (tap, in_channel) to (in_channel, tap)."""
    rows = unpack_int8_rows(packed, groups, out_g, k).reshape(-1, taps, k // taps).transpose(1, 2).reshape(-1, k)
    return dequantize_rows(rows, scale, zero_point)


def q4_dequantize(packed: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, cols: int,
                  group: int) -> torch.Tensor:
    """Twin of ``kernels.int4.q4_dequantize`` (any device): float32 ``[rows, cols]`` of int4
    buffers, ``w = (code - zero_point / 16) * scale``; byte j of a block holds code j (low
    nibble) and code j + INT4_BLOCK / 2 (high nibble)."""
    rows = packed.shape[0]
    blocks = packed.reshape(rows, -1, INT4_BLOCK // 2).to(torch.int32)
    codes = torch.cat([blocks & 15, blocks >> 4], dim=2).reshape(rows, -1).float()  # [rows, padded]
    padded = codes.shape[1]
    s = scale.float().repeat_interleave(group, dim=1)[:, :padded]
    z = (zero_point.float() / 16.0).repeat_interleave(group, dim=1)[:, :padded]
    return ((codes - z) * s)[:, :cols]


def q4_linear(x2d: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, group: int,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Twin of ``kernels.int4.q4_linear`` with fp32 activations: ``x2d @ W.T + bias`` in float32."""
    w = q4_dequantize(packed, scale, zero_point, x2d.shape[-1], group)
    return F.linear(x2d.float(), w, None if bias is None else bias.float())


def half_linear(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Twin of ``kernels.fp16.half_linear``: ``x2d @ W.T + bias`` in float32 with the fp16 /
    bf16 weight converted by torch (exact)."""
    return F.linear(x2d.float(), weight.float(), None if bias is None else bias.float())
