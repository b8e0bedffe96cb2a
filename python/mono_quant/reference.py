"""Pure-torch twins of the kernels in ``kernels.py``: same names, same results.

They are the test oracles for the C kernels and the fallback for tensors the
C kernels cannot take (CUDA, other devices).  Written for clarity, not speed.
"""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["rows_minmax", "choose_qparams", "quantize_rows", "quantize_rows_fused", "rows_sqerr", "dequantize_rows",
           "linear_int8", "conv2d_int8"]

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
    if symmetric:
        amax = torch.maximum(-min_neg, max_pos)
        scale = amax / torch.tensor((qmax - qmin) / 2.0, dtype=torch.float32)
    else:
        span = torch.tensor(float(qmax - qmin), dtype=torch.float32)
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


def linear_int8(x: torch.Tensor, qdata: torch.Tensor, w_scale: torch.Tensor, w_zero_point: torch.Tensor,
                bias=None, mode: str = "dynamic") -> torch.Tensor:
    """Twin of ``kernels.linear_int8`` on the unpacked int8 weight ``qdata`` [out, in].

    "dynamic": x quantized per row (symmetric, -127..127), exact integer
    accumulation, then ``float(acc) * (x_scale * w_scale) + bias`` in fp32:
    the kernels' exact arithmetic.  "weight_only": ``x @ dequantized.T + bias``.
    "int8_acc": x is int8, returns the int32 ``x @ (qdata - zero_point).T``.
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
    q, x_scale, _, _, _, _ = quantize_rows_fused(x, -127, 127, True)
    acc = q.double() @ w.T
    y = acc.float() * (x_scale.reshape(-1, 1) * w_scale.float().reshape(1, -1))
    return y if bias is None else y + bias.float()


def conv2d_int8(x: torch.Tensor, qdata: torch.Tensor, w_scale: torch.Tensor, w_zero_point: torch.Tensor, bias,
                stride, padding, dilation, groups: int) -> torch.Tensor:
    """Twin of ``_C.conv2d_int8`` (dynamic int8 Conv2d), NCHW float32 out:
    each image quantized with one symmetric int8 scale (-127..127), exact
    integer products and sums, then ``float(acc) * (x_scale * w_scale) + bias``."""
    import torch.nn.functional as F

    batch = x.shape[0]
    q, x_scale, _, _, _, _ = quantize_rows_fused(x.float().reshape(batch, -1), -127, 127, True)
    w = qdata.double() - w_zero_point.to(qdata.device).double().reshape(-1, 1, 1, 1)
    acc = F.conv2d(q.double().reshape(x.shape), w, None, stride, padding, dilation, groups)  # exact below 2**53
    scale = x_scale.reshape(-1, 1, 1, 1) * w_scale.float().reshape(1, -1, 1, 1)
    y = acc.float() * scale
    return y if bias is None else y + bias.float().reshape(1, -1, 1, 1)
