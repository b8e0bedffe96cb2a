"""Wrappers over the C int8 matmul kernels and the packed int8 layout (docs/formats.md,
"Packed INT8 matmul weights"): packing, quantizing straight into the packed layout (also
from a file), checking packed buffers read from a file, the matmul and the conv.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from .. import _C
from .rows import as_rows, quantize_rows_fused, to_numpy, uses_c
from .settings import SETTINGS

__all__ = ["pack_int8", "quantize_pack_int8", "quantize_pack_int8_file", "packed_check", "linear_int8",
           "linear_int8_raw", "conv2d_int8_raw", "linear_kernels", "MAX_IN_FEATURES", "prepare_linear_int8",
           "linear_int8_prepared"]


def pack_int8(q: torch.Tensor, out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
              ) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    """Pack a 2-D int8 weight [out, in] into the kernels' panel layout (docs/formats.md).

    Returns ``(packed int8 [round_up(out,16) * round_up(in,4)], column sums int32
    [round_up(out,16)], has_m128)``; ``has_m128`` says some weight is -128.  With
    ``out=(packed, sums)`` (contiguous CPU tensors of exactly those sizes) it writes
    there instead of allocating.
    """
    q = as_rows(q).detach().to("cpu")
    if q.dtype != torch.int8:
        raise TypeError(f"pack_int8 takes an int8 weight, got {q.dtype}")
    target = None if out is None else (out[0].numpy(), out[1].numpy())
    packed, w_sum, has_m128 = _C.pack_int8(q.numpy(), nthreads=SETTINGS.num_threads(), out=target)
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
    x = as_rows(x)
    if not uses_c(x) or x.numel() == 0:  # (an empty weight: the two steps give its empty buffers)
        q, s, z, bad, sx, se = quantize_rows_fused(x, qmin, qmax, symmetric, with_error)
        packed, w_sum, has_m128 = pack_int8(q.to(torch.int8), out)
        return packed, w_sum, s, z, has_m128, bad, sx, se
    target = None if out is None else (out[0].numpy(), out[1].numpy())
    return _qpack_tensors(_C.quantize_pack_int8(to_numpy(x), qmin, qmax, bool(symmetric), with_error=with_error,
                                                nthreads=SETTINGS.num_threads(), out=target), out)


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
        nthreads=SETTINGS.num_threads(), out=target), out)


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
    sums, has_m128, padding_nonzero = _C.packed_check(packed.detach().cpu().numpy(), n, k,
                                                      nthreads=SETTINGS.num_threads())
    return torch.from_numpy(sums), bool(has_m128), bool(padding_nonzero)


def linear_int8(x: torch.Tensor, packed: torch.Tensor, w_sum: torch.Tensor, w_scale: torch.Tensor,
                w_zero_point: torch.Tensor, bias: Optional[torch.Tensor], out_features: int, has_m128: bool,
                mode: str = "dynamic", reduce_range: bool = False) -> torch.Tensor:
    """``x @ W.T + bias`` on a packed int8 weight, for a 2-D CPU ``x`` [rows, in].

    ``mode``: "dynamic" (x quantized per row to int8, int32 accumulation),
    "weight_only" (fp32 x, W dequantized in registers), or "int8_acc" (x is
    int8; returns the exact int32 accumulators ``x @ (W - zero_point).T``).
    ``reduce_range`` ("dynamic" only): x quantized per row to 7 bits, asymmetric
    (0..127 with a zero-point; ``QuantConfig.reduce_range``).
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
        int(out_features), bool(has_m128), mode=mode, nthreads=SETTINGS.num_threads(),
        reduce_range=bool(reduce_range),
    )
    return torch.from_numpy(y)


def linear_kernels() -> dict:
    """The int8 matmul kernels in use at the active ISA level, and the largest in_features they take."""
    return _C.linear_kernels()


#: The largest in_features (K) the int8 matmul kernels take (a constant of the build).
MAX_IN_FEATURES = int(_C.linear_kernels()["max_in_features"])


def linear_int8_raw(x2d: np.ndarray, args: tuple, mode: str, reduce_range: bool = False) -> np.ndarray:
    """The C int8 matmul on NumPy arguments prepared once per layer (``args``: packed,
    column sums, scale, zero-point, bias, out_features, has_m128; see
    ``formats.packed_int8.kernel_args``): the per-call path of the modules.
    ``reduce_range`` (mode "dynamic"): 7-bit activations, see ``QuantConfig.reduce_range``.
    (Arguments passed by position: matching keywords cost more than a batch-1 kernel.)"""
    return _C.linear_int8(x2d, *args, mode, SETTINGS.num_threads(), reduce_range)


def prepare_linear_int8(args: tuple, in_features: int):
    """``args`` (one group's weight arguments of :func:`linear_int8_raw`) checked once by C
    for an ``in_features``-wide input: an opaque object for :func:`linear_int8_prepared`,
    which holds the arrays.  Raises as ``linear_int8`` does on inconsistent arguments."""
    return _C.linear_int8_prepare(*args, in_features)


def linear_int8_prepared(x2d: np.ndarray, prepared, reduce_range: bool = False) -> np.ndarray:
    """:func:`linear_int8_raw` in mode "dynamic" with weight arguments checked once
    (:func:`prepare_linear_int8`): the same result, without matching and checking the
    weight's six arguments per call (~0.3 us, as much as a small layer's GEMV)."""
    return _C.linear_int8_prepared(x2d, prepared, SETTINGS.num_threads(), reduce_range)


def conv2d_int8_raw(x: np.ndarray, args: tuple, geometry: tuple, nchw: bool = True,
                    reduce_range: bool = False) -> np.ndarray:
    """The C dynamic int8 conv (NHWC int8 im2col, per-image activation scale) on NumPy
    arguments prepared once per layer; ``geometry`` is (kernel_size, stride, padding,
    dilation, groups).  float32 NCHW out with ``nchw``; ``reduce_range``: 7-bit
    activations (per image, asymmetric 0..127)."""
    return _C.conv2d_int8(x, *args, *geometry, SETTINGS.num_threads(), nchw, reduce_range)  # (by position, as above)
