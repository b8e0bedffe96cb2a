"""Pure-torch twins of the static int8 kernels (csrc/static_int8.c): the same
integer arithmetic and the same fp32 epilogue, so results must be bit-identical.

Accumulators are computed in float64 on integer values (exact below 2^53) of
``x - x_zp`` (zero padding is ``x_zp``, so it adds 0), then:
``y = float32(acc) * x_w_scale (+ bias)``, ``v = clamp(y, act_lo, act_hi)``,
``q = clamp(round_half_even(v * inv_out_scale) + out_zp, -127, 127)``.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["quantize_ref", "conv2d_ref", "linear_ref", "add_ref", "avgpool_ref", "requantize_ref"]


def _activate(y: torch.Tensor, act_lo: float, act_hi: float) -> torch.Tensor:
    # NaN -> act_lo, as the C kernel's (y > lo ? y : lo)
    y = torch.where(y > act_lo, y, torch.tensor(act_lo, dtype=torch.float32))
    return torch.where(y < act_hi, y, torch.tensor(act_hi, dtype=torch.float32))


def requantize_ref(v: torch.Tensor, inv_out_scale: float, zp: int = 0) -> torch.Tensor:
    s = v * torch.tensor(inv_out_scale, dtype=torch.float32)
    s = torch.where(s > -127.0 - zp, s, torch.tensor(-127.0 - zp)).clamp(max=127.0 - zp)
    return (torch.round(s).to(torch.int32) + zp).to(torch.int8)


def _finish(y: torch.Tensor, act: Tuple[float, float], inv_out_scale: Optional[float], zp: int = 0) -> torch.Tensor:
    v = _activate(y, *act)
    return v if inv_out_scale is None else requantize_ref(v, inv_out_scale, zp)


def quantize_ref(x: torch.Tensor, inv_scale: float, zp: int = 0) -> torch.Tensor:
    """float NCHW (or 2-D) -> int8 NHWC (or 2-D)."""
    q = requantize_ref(x.float(), inv_scale, zp)
    return q.permute(0, 2, 3, 1).contiguous() if q.dim() == 4 else q


def conv2d_ref(xq: torch.Tensor, w: torch.Tensor, x_w_scale: torch.Tensor, bias: Optional[torch.Tensor], stride=(1, 1),
               padding=(0, 0), dilation=(1, 1), groups=1, act=(-math.inf, math.inf),
               inv_out_scale: Optional[float] = None, x_zp: int = 0, out_zp: int = 0) -> torch.Tensor:
    """xq int8 NHWC, w int8 [n, c/groups, kh, kw] -> NHWC int8 (inv_out_scale) or float32."""
    acc = F.conv2d(xq.permute(0, 3, 1, 2).double() - x_zp, w.double(), None, stride, padding, dilation, groups)
    y = acc.float().permute(0, 2, 3, 1) * x_w_scale.float()
    if bias is not None:
        y = y + bias.float()
    return _finish(y, act, inv_out_scale, out_zp).contiguous()


def linear_ref(xq: torch.Tensor, w: torch.Tensor, x_w_scale, bias, act=(-math.inf, math.inf), inv_out_scale=None,
               x_zp: int = 0, out_zp: int = 0):
    """xq int8 [rows, k], w int8 [n, k]."""
    y = ((xq.double() - x_zp) @ w.double().t()).float() * x_w_scale.float()
    if bias is not None:
        y = y + bias.float()
    return _finish(y, act, inv_out_scale, out_zp)


def add_ref(a, a_scale: float, b, b_scale: float, act=(-math.inf, math.inf), inv_out_scale=None, a_zp: int = 0,
            b_zp: int = 0, out_zp: int = 0):
    y = (a.float() - a_zp) * torch.tensor(a_scale) + (b.float() - b_zp) * torch.tensor(b_scale)
    return _finish(y, act, inv_out_scale, out_zp)


def avgpool_ref(xq: torch.Tensor, mul: float, act=(-math.inf, math.inf), inv_out_scale=None, x_zp: int = 0,
                out_zp: int = 0):
    """xq int8 NHWC -> [batch, channels]."""
    s = xq.to(torch.int64).sum(dim=(1, 2)) - x_zp * xq.shape[1] * xq.shape[2]
    return _finish(s.float() * torch.tensor(mul, dtype=torch.float32), act, inv_out_scale, out_zp)
