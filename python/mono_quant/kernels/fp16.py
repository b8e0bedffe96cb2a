"""Wrapper over the C fp16 / bf16 weight linear (csrc/fp16.c): float32 activations times a
16-bit weight widened to float32 in registers, so the weight is read as stored (half the
bytes of a float32 one) and never converted whole per call."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _C
from .settings import SETTINGS

__all__ = ["half_linear", "half_linear_arrays", "half_linear_raw", "HALF_WEIGHT_DTYPES", "KERNEL_MAX_ROWS"]

#: weight dtypes half_linear takes
HALF_WEIGHT_DTYPES = (torch.float16, torch.bfloat16)


# A Linear runs half_linear when x (reshaped to 2-D) has at most this many rows,
# per kernel level, and torch's F.linear on the weight converted to float32 above.  A rule on
# the shapes, never a timing, so the same input always takes the same path.  From
# benchmarks/bench_fp16.py --crossover (docs/benchmarks.md, "fp16 weights"; BERT layer shapes,
# rows 1-4096, 1 thread).  AVX-512 (Zen 5): the kernel beat fp32 F.linear and the
# converted-weight path at every row count (0.5-0.7x fp32 time).  AVX2: on a real AVX2-only
# CPU (Zen 3, 1 Dec) the kernel is ahead up to 64 rows (0.28-0.93x the converted path's time)
# and behind from 128-256 (1.02-1.33x: sgemm's outer-product tiles against the kernel's
# dot-product tiles and their horizontal sums); Zen 4 at the AVX2 level agreed (1.07-1.14x
# at K = 384); only Zen 5 capped at AVX2 had the kernel ahead everywhere.  The scalar level
# (no F16C: the portable reference, 4-11x slower) keeps torch's op.
KERNEL_MAX_ROWS = {"scalar": 0, "avx2": 64, "avx512": 1 << 62}


def half_linear(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """float32 ``x2d @ weight.T + bias`` on the CPU for a float32 ``x2d`` ``[m, k]`` and a
    float16 / bfloat16 ``weight`` ``[n, k]`` (non-contiguous inputs are copied first); the
    bias (any float dtype) is taken as float32.  Twin: ``F.linear(x2d, weight.float(), bias)``.
    Raises TypeError / ValueError (from the C layer) for other dtypes or mismatched shapes."""
    if weight.dtype not in HALF_WEIGHT_DTYPES:
        raise TypeError(f"half_linear takes a float16 or bfloat16 weight, got {weight.dtype}")
    # (no .contiguous() here: the C layer copies a strided array itself; each torch call
    # costs ~0.5 us, a tenth of a small layer's whole call)
    is_bf16 = weight.dtype == torch.bfloat16
    w = weight.detach()
    w = w.view(torch.int16).numpy() if is_bf16 else w.numpy()  # bf16 crosses as its bits
    if bias is not None:
        bias = (bias if bias.dtype == torch.float32 and not bias.requires_grad else bias.detach().float()).numpy()
    y = _C.h16_linear(x2d.detach().numpy(), w, is_bf16, bias=bias, nthreads=SETTINGS.num_threads())
    return torch.from_numpy(y)


def half_linear_arrays(weight: torch.Tensor, bias: Optional[torch.Tensor], op: str = "half_linear") -> tuple:
    """``(weight array, is_bf16, float32 bias array or None)``: what :func:`half_linear_raw`
    (and half_conv2d_raw) takes for a layer (views where the tensors allow; a caller may keep
    them per layer).  ``op`` names the caller in the error for another weight dtype."""
    if weight.dtype not in HALF_WEIGHT_DTYPES:
        raise TypeError(f"{op} takes a float16 or bfloat16 weight, got {weight.dtype}")
    is_bf16 = weight.dtype == torch.bfloat16
    w = weight.detach()
    w = w.view(torch.int16).numpy() if is_bf16 else w.numpy()
    return w, is_bf16, None if bias is None else bias.detach().to(torch.float32).numpy()


def half_linear_raw(x2d: torch.Tensor, w, is_bf16: bool, bias) -> torch.Tensor:
    """:func:`half_linear` on the arrays of :func:`half_linear_arrays` (``x2d`` float32, no grad)."""
    return torch.from_numpy(_C.h16_linear(x2d.numpy(), w, is_bf16, bias=bias, nthreads=SETTINGS.num_threads()))
