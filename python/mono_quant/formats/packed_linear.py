"""The packed int8 matmul path of a layer (QuantizedLinear, and QuantizedConv2d on its
im2col rows): when the C kernels take an input, the product through them, and the
shape rule choosing dequantize + BLAS instead for weight-only layers."""
from __future__ import annotations

import torch

from .. import kernels
from ..kernels.int8 import MAX_IN_FEATURES, linear_int8_raw
from ..packing import unpack_int8_rows

__all__ = ["BLAS_MIN_ROWS", "blas_min_rows", "kernel_takes", "packed_linear", "dequantized_packed", "KERNEL_DTYPES"]

#: activation dtypes the int8 kernels read
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Rows (of x reshaped to 2-D) from which a weight-only int8 layer runs torch's BLAS on the
# weight dequantized once per call instead of the packed kernels, per kernel level.  A rule
# on the shape, never a timing: the same input always takes the same path.  From
# benchmarks/bench_ab.py and bench_models.py --crossover (docs/benchmarks.md, "Whole
# models"): on AVX2 (torch capped at AVX2 too, as on an AVX2-only CPU) the packed kernel's
# 6-row tiles run at 1.1-1.4x fp32 from 16 to 2048 rows, dequantize + BLAS at 0.8-1.0x;
# on AVX-512 the packed kernel wins at every row count (0.5-0.7x fp32 time); the scalar
# level was not measured.  No level takes the BLAS path today; the table stays for tests
# and for levels that may need it.
BLAS_MIN_ROWS = {"scalar": 1 << 62, "avx2": 1 << 62, "avx512": 1 << 62}


def blas_min_rows() -> int:
    """Rows from which a weight-only int8 layer takes the dequantize + BLAS path on
    the active kernel level (see BLAS_MIN_ROWS; int4: ``int4.BLAS_MIN_ROWS``)."""
    return BLAS_MIN_ROWS[kernels.SETTINGS.isa]


def kernel_takes(x: torch.Tensor, in_features: int) -> bool:
    """Whether the C kernels can run this input (else: the torch fallback)."""
    if not x.is_cpu or x.dtype not in KERNEL_DTYPES or x.shape[-1] != in_features:
        return False
    if in_features > MAX_IN_FEATURES or x.numel() == 0:
        return False
    return not (x.requires_grad and torch.is_grad_enabled())  # the kernels have no backward


def packed_linear(module, x2d: torch.Tensor, args: tuple) -> torch.Tensor:
    """float32 ``x2d @ W.T + b`` through the C kernels with one group's
    ``kernel_args``; ``module.activations`` picks dynamic int8 or weight-only."""
    if x2d.shape[-1] > 1 and x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    mode = "dynamic" if module.activations == "dynamic" else "weight_only"
    reduce_range = mode == "dynamic" and module.reduce_range  # 7-bit activations (QuantConfig.reduce_range)
    return torch.from_numpy(linear_int8_raw(kernels.to_numpy(x2d), args, mode, reduce_range))


def dequantized_packed(module, info: dict) -> torch.Tensor:
    """The float32 weight ``[out, K]`` of a packed int8 layer (K in the packed order:
    (kh, kw, in_channel) for a conv), unpacked and dequantized in one call each
    (the same values as ``dequantized_weight``)."""
    n, k, groups = info["out_features"], info["in_features"], info["groups"]
    rows = unpack_int8_rows(module.weight_packed, groups, n // groups, k).reshape(n, k)
    return kernels.dequantize_rows(rows, module.weight_scale, module.weight_zero_point)
