"""Typed wrappers over the C extension: torch <-> numpy, dtype and device checks.

Tensors cross into ``mono_quant._C`` as NumPy arrays without a copy where the
layout allows (bf16 as an int16 view).  Anything the C kernels cannot take
(a CUDA tensor, say) goes to the pure-torch twin in ``reference.py``, which
gives the same results.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Tuple

import numpy as np
import torch

from . import _C, reference

__all__ = [
    "cpu_info",
    "per_tensor_uses_fma",
    "get_isa",
    "set_isa",
    "num_threads",
    "rows_minmax",
    "choose_qparams",
    "quantize_rows",
    "quantize_rows_fused",
    "rows_sqerr",
    "dequantize_rows",
    "pack_int8",
    "quantize_pack_int8",
    "quantize_pack_int8_file",
    "packed_check",
    "linear_int8",
    "linear_kernels",
]

_C_SOURCE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


THREADING_BACKENDS = ("pool", "pthreads")


def _select_threading_backend() -> None:
    """MONO_QUANT_THREADS picks how the kernels use threads (csrc/parallel.c):
    "pool" (default: persistent helpers, never waited on to start, safe across
    fork) or "pthreads" (threads started and joined per call)."""
    name = os.environ.get("MONO_QUANT_THREADS", "").strip().lower()
    if not name:
        return
    if name not in THREADING_BACKENDS:
        warnings.warn(f"MONO_QUANT_THREADS={name!r} is not one of {THREADING_BACKENDS}; using \"pool\"",
                      RuntimeWarning, stacklevel=2)
        return
    _C.set_threading_backend(name)


_select_threading_backend()


def cpu_info() -> dict:
    """CPU features mono-quant dispatches on, plus ``best_isa`` / ``active_isa``."""
    return _C.cpu_info()


def per_tensor_uses_fma() -> bool:
    """Whether torch.quantize_per_tensor rounds ``x * (1/scale) + zp`` with one
    FMA on this CPU: fbgemm takes its AVX2 path (FMA) where the CPU has AVX2
    and FMA, else the scalar loop, which rounds the product first (as per
    channel).  Follows the CPU, not the MONO_QUANT_ISA cap, as torch does."""
    info = _C.cpu_info()
    return bool(info["avx2"] and info["fma"])


def get_isa() -> str:
    return _C.get_isa()


def set_isa(name: str) -> str:
    """Force the kernel level (``"scalar"``, ``"avx2"``, ``"avx512"``); returns the previous one."""
    return _C.set_isa(name)


def num_threads() -> int:
    """Threads the C kernels use: torch's intra-op setting, so both agree."""
    return max(1, int(torch.get_num_threads()))


def _uses_c(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in _C_SOURCE_DTYPES


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a NumPy array sharing memory; bf16 becomes an int16 view."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy()


def _rows(t: torch.Tensor) -> torch.Tensor:
    if t.dim() != 2:
        raise ValueError(f"expected a 2-D tensor of rows, got shape {tuple(t.shape)}")
    return t.contiguous()


def rows_minmax(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Per-row (min, max) of a 2-D tensor and the first row holding NaN/Inf (or -1)."""
    x = _rows(x)
    if not _uses_c(x):
        return reference.rows_minmax(x)
    mn, mx, bad = _C.rows_minmax(to_numpy(x), nthreads=num_threads())
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
    x = _rows(x)
    if not _uses_c(x):
        return reference.quantize_rows(x, scale, zero_point, qmin, qmax, use_fma)
    scale = scale.detach().to("cpu", torch.float32).contiguous()
    zero_point = zero_point.detach().to("cpu", torch.int32).contiguous()
    q = _C.quantize_rows(
        to_numpy(x), scale.numpy(), zero_point.numpy(), qmin, qmax, use_fma=use_fma, nthreads=num_threads()
    )
    return torch.from_numpy(q)


def quantize_rows_fused(x: torch.Tensor, qmin: int, qmax: int, symmetric: bool, with_error: bool = False):
    """Per-row min/max + qparams + quantize in one pass.

    Returns ``(q, scale, zero_point, bad_row, sum_x2, sum_err2)``; the last two
    (float64 per row: signal and quantization-noise power) are None unless
    ``with_error``.
    """
    x = _rows(x)
    if not _uses_c(x):
        return reference.quantize_rows_fused(x, qmin, qmax, symmetric, with_error)
    q, s, z, bad, sx, se = _C.quantize_rows_fused(
        to_numpy(x), qmin, qmax, bool(symmetric), with_error=with_error, nthreads=num_threads()
    )
    wrap = (lambda a: None if a is None else torch.from_numpy(a))
    return torch.from_numpy(q), torch.from_numpy(s), torch.from_numpy(z), bad, wrap(sx), wrap(se)


def rows_sqerr(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor):
    """Per row, (sum of x^2, sum of (x - dequantized)^2) as float64."""
    x, q = _rows(x), _rows(q)
    if not _uses_c(x) or q.device.type != "cpu":
        return reference.rows_sqerr(x, q, scale, zero_point)
    sx, se = _C.rows_sqerr(
        to_numpy(x), q.numpy(),
        scale.detach().to("cpu", torch.float32).contiguous().numpy(),
        zero_point.detach().to("cpu", torch.int32).contiguous().numpy(),
        nthreads=num_threads(),
    )
    return torch.from_numpy(sx), torch.from_numpy(se)


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                    out_device: Optional[torch.device] = None) -> torch.Tensor:
    """(q - zero_point) * scale per row, as float32."""
    q = _rows(q)
    if q.device.type != "cpu" or q.dtype not in (torch.int8, torch.uint8):
        return reference.dequantize_rows(q, scale, zero_point)
    out = _C.dequantize_rows(
        q.numpy(),
        scale.detach().to("cpu", torch.float32).contiguous().numpy(),
        zero_point.detach().to("cpu", torch.int32).contiguous().numpy(),
        nthreads=num_threads(),
    )
    return torch.from_numpy(out)


def pack_int8(q: torch.Tensor, out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
              ) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    """Pack a 2-D int8 weight [out, in] into the kernels' panel layout (docs/formats.md).

    Returns ``(packed int8 [round_up(out,16) * round_up(in,4)], column sums int32
    [round_up(out,16)], has_m128)``; ``has_m128`` says some weight is -128.  With
    ``out=(packed, sums)`` (contiguous CPU tensors of exactly those sizes) it writes
    there instead of allocating.
    """
    q = _rows(q).detach().to("cpu")
    if q.dtype != torch.int8:
        raise TypeError(f"pack_int8 takes an int8 weight, got {q.dtype}")
    target = None if out is None else (out[0].numpy(), out[1].numpy())
    packed, w_sum, has_m128 = _C.pack_int8(q.numpy(), nthreads=num_threads(), out=target)
    if out is not None:
        return out[0], out[1], bool(has_m128)
    return torch.from_numpy(packed), torch.from_numpy(w_sum), bool(has_m128)


def quantize_pack_int8(x: torch.Tensor, qmin: int, qmax: int, symmetric: bool, with_error: bool = False,
                       out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
    """Per-channel int8 quantization of a 2-D weight straight into the packed layout.

    The same bytes as :func:`quantize_rows_fused` then :func:`pack_int8`, in one
    pass (the plain int8 weight never exists).  Returns ``(packed, column sums,
    scale, zero_point, has_m128, bad_row, sum_x2, sum_err2)``; ``bad_row`` is the
    first row holding NaN/Inf (-1 if none; the packed bytes are then not
    meaningful) and the sums are None unless ``with_error``.  ``out`` as for
    :func:`pack_int8`.
    """
    x = _rows(x)
    if not _uses_c(x) or x.numel() == 0:  # (an empty weight: the two steps give its empty buffers)
        q, s, z, bad, sx, se = quantize_rows_fused(x, qmin, qmax, symmetric, with_error)
        packed, w_sum, has_m128 = pack_int8(q.to(torch.int8), out)
        return packed, w_sum, s, z, has_m128, bad, sx, se
    target = None if out is None else (out[0].numpy(), out[1].numpy())
    return _qpack_tensors(_C.quantize_pack_int8(
        to_numpy(x), qmin, qmax, bool(symmetric), with_error=with_error, nthreads=num_threads(), out=target), out)


_FILE_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def quantize_pack_int8_file(fd: int, offset: int, shape: Tuple[int, int], dtype: torch.dtype, qmin: int, qmax: int,
                            symmetric: bool, with_error: bool = False,
                            out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
    """:func:`quantize_pack_int8` of the ``shape`` weight of ``dtype`` (float32, float16 or
    bfloat16) stored row after row at ``offset`` of the open file ``fd``, read with pread:
    nothing is memory-mapped.  Same returns; ValueError when the file is too short,
    OSError when a read fails."""
    if dtype not in _FILE_DTYPES:
        raise TypeError(f"quantize_pack_int8_file reads float32, float16 or bfloat16, got {dtype}")
    target = None if out is None else (out[0].numpy(), out[1].numpy())
    return _qpack_tensors(_C.quantize_pack_int8_file(
        fd, offset, shape[0], shape[1], _FILE_DTYPES[dtype], qmin, qmax, bool(symmetric), with_error=with_error,
        nthreads=num_threads(), out=target), out)


def _qpack_tensors(result, out):
    """The C quantize_pack results as tensors (the caller's ``out`` pair when given)."""
    packed, w_sum, s, z, has_m128, bad, sx, se = result
    wrap = (lambda a: None if a is None else torch.from_numpy(a))
    if out is None:
        packed, w_sum = torch.from_numpy(packed), torch.from_numpy(w_sum)
    else:
        packed, w_sum = out
    return packed, w_sum, torch.from_numpy(s), torch.from_numpy(z), bool(has_m128), bad, wrap(sx), wrap(se)


def packed_check(packed: torch.Tensor, n: int, k: int) -> Tuple[torch.Tensor, bool, bool]:
    """For packed int8 buffers of an [n, k] weight read from a file: (column sums of the
    packed bytes, some byte is -128, some padding byte is not 0).  One pass, in C."""
    sums, has_m128, padding_nonzero = _C.packed_check(packed.detach().cpu().numpy(), n, k, nthreads=num_threads())
    return torch.from_numpy(sums), bool(has_m128), bool(padding_nonzero)


def linear_int8(x: torch.Tensor, packed: torch.Tensor, w_sum: torch.Tensor, w_scale: torch.Tensor,
                w_zero_point: torch.Tensor, bias: Optional[torch.Tensor], out_features: int, has_m128: bool,
                mode: str = "dynamic") -> torch.Tensor:
    """``x @ W.T + bias`` on a packed int8 weight, for a 2-D CPU ``x`` [rows, in].

    ``mode``: "dynamic" (x quantized per row to int8, int32 accumulation),
    "weight_only" (fp32 x, W dequantized in registers), or "int8_acc" (x is
    int8; returns the exact int32 accumulators ``x @ (W - zero_point).T``).
    Returns float32 [rows, out_features] (int32 for "int8_acc").  Rows may be
    strided; elements within a row are made contiguous if they are not.
    Raises ValueError / TypeError (from the C layer) on inconsistent inputs.
    """
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D tensor of rows, got shape {tuple(x.shape)}")
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        x = x.contiguous()
    y = _C.linear_int8(
        to_numpy(x), packed.numpy(), w_sum.numpy(),
        w_scale.detach().to(torch.float32).contiguous().numpy(),
        w_zero_point.detach().to(torch.int32).contiguous().numpy(),
        None if bias is None else bias.detach().to(torch.float32).contiguous().numpy(),
        int(out_features), bool(has_m128), mode=mode, nthreads=num_threads(),
    )
    return torch.from_numpy(y)


def linear_kernels() -> dict:
    """The int8 matmul kernels in use at the active ISA level, and the largest in_features they take."""
    return _C.linear_kernels()
