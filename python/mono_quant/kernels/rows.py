"""Wrappers over the C row kernels (min/max, qparams, quantize, dequantize, error):
torch <-> NumPy, dtype and device checks.

Tensors cross into ``mono_quant._C`` as NumPy arrays without a copy where the
layout allows (bf16 as an int16 view).  Anything the C kernels cannot take
(a CUDA tensor, say) goes to the pure-torch twin in :mod:`.reference`, which
gives the same results.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from .. import _C
from . import reference
from .settings import SETTINGS

__all__ = ["to_numpy", "per_tensor_uses_fma", "rows_minmax", "choose_qparams", "quantize_rows",
           "quantize_rows_fused", "rows_sqerr", "dequantize_rows", "dequantize_packed_int8", "as_rows", "uses_c",
           "C_SOURCE_DTYPES"]

#: float dtypes the C kernels read directly
C_SOURCE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def per_tensor_uses_fma() -> bool:
    """Whether torch.quantize_per_tensor rounds ``x * (1/scale) + zp`` with one
    FMA on this CPU: fbgemm takes its AVX2 path (FMA) where the CPU has AVX2
    and FMA, else the scalar loop, which rounds the product first (as per
    channel).  Follows the CPU, not the MONO_QUANT_ISA cap, as torch does."""
    info = _C.cpu_info()
    return bool(info["avx2"] and info["fma"])


def uses_c(t: torch.Tensor) -> bool:
    """Whether the C kernels read this tensor directly (a CPU tensor of a float dtype they take)."""
    return t.device.type == "cpu" and t.dtype in C_SOURCE_DTYPES


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a NumPy array sharing memory; bf16 becomes an int16 view."""
    if t.requires_grad:  # (detach is a torch call, ~0.5 us: only where .numpy() needs it)
        t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy()


def as_rows(t: torch.Tensor) -> torch.Tensor:
    if t.dim() != 2:
        raise ValueError(f"expected a 2-D tensor of rows, got shape {tuple(t.shape)}")
    return t.contiguous()


def rows_minmax(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Per-row (min, max) of a 2-D tensor and the first row holding NaN/Inf (or -1)."""
    x = as_rows(x)
    if not uses_c(x):
        return reference.rows_minmax(x)
    mn, mx, bad = _C.rows_minmax(to_numpy(x), nthreads=SETTINGS.num_threads())
    return torch.from_numpy(mn), torch.from_numpy(mx), bad


def choose_qparams(mn: torch.Tensor, mx: torch.Tensor, qmin: int, qmax: int, symmetric: bool):
    """(scale float32, zero_point int32) per entry, torch MinMaxObserver's formula."""
    mn = mn.detach().to("cpu", torch.float32).contiguous()
    mx = mx.detach().to("cpu", torch.float32).contiguous()
    s, z = _C.choose_qparams(mn.numpy(), mx.numpy(), qmin, qmax, bool(symmetric))
    return torch.from_numpy(s), torch.from_numpy(z)


def quantize_rows(x, scale, zero_point, qmin: int, qmax: int, use_fma: bool = False) -> torch.Tensor:
    """Affine quantization of each row (or the whole tensor with length-1 qparams).

    ``use_fma=False`` is torch.quantize_per_channel's rounding, ``True``
    torch.quantize_per_tensor's (see csrc/mq.h).
    """
    x = as_rows(x)
    if not uses_c(x):
        return reference.quantize_rows(x, scale, zero_point, qmin, qmax, use_fma)
    scale = scale.detach().to("cpu", torch.float32).contiguous()
    zero_point = zero_point.detach().to("cpu", torch.int32).contiguous()
    q = _C.quantize_rows(
        to_numpy(x), scale.numpy(), zero_point.numpy(), qmin, qmax, use_fma=use_fma, nthreads=SETTINGS.num_threads()
    )
    return torch.from_numpy(q)


def quantize_rows_fused(x: torch.Tensor, qmin: int, qmax: int, symmetric: bool, with_error: bool = False):
    """Per-row min/max + qparams + quantize in one pass.

    Returns ``(q, scale, zero_point, bad_row, sum_x2, sum_err2)``; the last two
    (float64 per row: signal and quantization-noise power) are None unless
    ``with_error``.
    """
    x = as_rows(x)
    if not uses_c(x):
        return reference.quantize_rows_fused(x, qmin, qmax, symmetric, with_error)
    q, s, z, bad, sx, se = _C.quantize_rows_fused(
        to_numpy(x), qmin, qmax, bool(symmetric), with_error=with_error, nthreads=SETTINGS.num_threads()
    )
    wrap = (lambda a: None if a is None else torch.from_numpy(a))
    return torch.from_numpy(q), torch.from_numpy(s), torch.from_numpy(z), bad, wrap(sx), wrap(se)


def rows_sqerr(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor):
    """Per row, (sum of x^2, sum of (x - dequantized)^2) as float64."""
    x, q = as_rows(x), as_rows(q)
    if not uses_c(x) or q.device.type != "cpu":
        return reference.rows_sqerr(x, q, scale, zero_point)
    sx, se = _C.rows_sqerr(
        to_numpy(x), q.numpy(),
        scale.detach().to("cpu", torch.float32).contiguous().numpy(),
        zero_point.detach().to("cpu", torch.int32).contiguous().numpy(),
        nthreads=SETTINGS.num_threads(),
    )
    return torch.from_numpy(sx), torch.from_numpy(se)


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                    out_device: Optional[torch.device] = None, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(q - zero_point) * scale per row, as float32.  ``out``: a contiguous float32 CPU tensor of
    the rows' shape to write them into (and return), e.g. a per-thread buffer (formats/call_scratch.py)."""
    q = as_rows(q)
    if q.device.type != "cpu" or q.dtype not in (torch.int8, torch.uint8):
        rows = reference.dequantize_rows(q, scale, zero_point)
        return rows if out is None else out.copy_(rows)
    y = _C.dequantize_rows(
        q.numpy(),
        scale.detach().to("cpu", torch.float32).contiguous().numpy(),
        zero_point.detach().to("cpu", torch.int32).contiguous().numpy(),
        nthreads=SETTINGS.num_threads(),
        out=None if out is None else out.numpy(),
    )
    return out if out is not None else torch.from_numpy(y)


def dequantize_packed_int8(packed: torch.Tensor, groups: int, out_g: int, k: int, taps: int, scale: torch.Tensor,
                           zero_point: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A packed int8 CPU weight (``groups`` blocks of ``out_g`` channels by ``k``, layout.h) as
    float32 ``[groups * out_g, k]`` rows, (code - zero_point) * scale per row, with K in torch's
    order (a conv's packed (tap, in_channel) of ``taps`` taps as (in_channel, tap)), in one C
    pass: what unpack_int8_rows, a permute and dequantize_rows give.  ``out``: a contiguous float32 CPU
    tensor of that shape to write them into (and return), e.g. a per-thread buffer (formats/call_scratch.py)."""
    y = _C.packed_dequantize(
        packed.numpy(), groups, out_g, k, taps,
        scale.detach().to("cpu", torch.float32).contiguous().numpy(),
        zero_point.detach().to("cpu", torch.int32).contiguous().numpy(),
        nthreads=SETTINGS.num_threads(),
        out=None if out is None else out.detach().numpy(),
    )
    return torch.from_numpy(y) if out is None else out


