"""Wrappers over the C int4 kernels (csrc/int4.c): group-wise quantization straight into
the packed int4 layout, dequantization, and the matmul that streams the packed weight.
Layout: docs/formats.md, "INT4" (and :mod:`.layout`)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .. import _C
from .rows import to_numpy
from .settings import SETTINGS

__all__ = ["q4_quantize", "q4_dequantize", "q4_linear", "q4_linear_arrays", "Q4_ACTIVATION_DTYPES"]

#: ``q4_linear_arrays(x, packed, scale, zero_point, group, bias=, int8_activations=, nthreads=)`` on
#: NumPy arrays (the C function itself, no Python frame: formats/int4_call.py's kept call)
q4_linear_arrays = _C.q4_linear

#: activation dtypes q4_linear reads directly (others go through float32)
Q4_ACTIVATION_DTYPES = (torch.float32, torch.bfloat16)


def q4_quantize(rows: torch.Tensor, group: int, symmetric: bool, method_index: int, with_error: bool):
    """Quantize a contiguous 2-D CPU tensor of rows (float32 / float16 / bfloat16), ``group``
    columns per group: ``(packed uint8 [rows, kpad/2], scale float16 [rows, groups], zero_point
    uint8 [rows, groups], bad_row, sum_x2, sum_err2)`` (the float64 per-row error sums are None
    unless ``with_error``; ``bad_row`` is the first row holding NaN/Inf, or -1)."""
    packed, scale, zero, bad, sx, se = _C.q4_quantize(to_numpy(rows), group, bool(symmetric), method_index,
                                                      with_error, nthreads=SETTINGS.num_threads())
    wrap = (lambda a: None if a is None else torch.from_numpy(a))
    return torch.from_numpy(packed), torch.from_numpy(scale), torch.from_numpy(zero), bad, wrap(sx), wrap(se)


def q4_dequantize(packed: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, cols: int,
                  group: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float32 ``[rows, cols]`` from CPU int4 buffers (twin: ``reference.q4_dequantize``), written
    into ``out`` (a contiguous float32 CPU ``[rows, cols]`` tensor, returned) when given."""
    if out is not None:
        _C.q4_dequantize(packed.numpy(), to_numpy(scale), zero_point.numpy(), cols, group,
                         nthreads=SETTINGS.num_threads(), out=out.numpy())
        return out
    return torch.from_numpy(_C.q4_dequantize(packed.numpy(), to_numpy(scale), zero_point.numpy(), cols, group,
                                             nthreads=SETTINGS.num_threads()))


def q4_linear(x2d: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, group: int,
              bias: Optional[torch.Tensor], int8_activations: bool = True) -> torch.Tensor:
    """float32 ``x2d @ W.T + bias`` streaming CPU int4 buffers; ``x2d`` float32 or bfloat16,
    contiguous.  Quantizes the activations to int8 where the CPU and shapes allow and
    ``int8_activations`` and ``SETTINGS.int4_int8_activations`` are on (twin: ``reference.q4_linear``,
    fp32 activations)."""
    b: Optional[np.ndarray] = None if bias is None else bias.detach().float().contiguous().numpy()
    mode = -1 if int8_activations and SETTINGS.int4_int8_activations else 0  # (-1: where the CPU and shapes allow)
    return torch.from_numpy(_C.q4_linear(to_numpy(x2d), packed.numpy(), to_numpy(scale), zero_point.numpy(), group,
                                         bias=b, int8_activations=mode, nthreads=SETTINGS.num_threads()))
