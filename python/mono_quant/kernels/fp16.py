"""Wrapper over the C fp16 / bf16 weight linear (csrc/fp16.c): float32 activations times a
16-bit weight widened to float32 in registers, so the weight is read as stored (half the
bytes of a float32 one) and never converted whole per call."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _C
from .row_rules import (HALF_KERNEL_MAX_ROWS, HALF_PANEL_MAX_IN_FEATURES, HALF_PANEL_MAX_ROWS, half_takes_amx,
                        small_weight_takes_blas)
from .settings import SETTINGS

__all__ = ["half_linear", "half_linear_arrays", "half_linear_raw", "half_path", "path_code", "HALF_WEIGHT_DTYPES",
           "KERNEL_MAX_ROWS", "PANEL_MAX_ROWS", "PANEL_MAX_IN_FEATURES"]

#: weight dtypes half_linear takes
HALF_WEIGHT_DTYPES = (torch.float16, torch.bfloat16)


# A Linear runs half_linear when x (reshaped to 2-D) has at most this many rows, per kernel
# level: its tiles up to KERNEL_MAX_ROWS, its panel path up to PANEL_MAX_ROWS (on layers of at most
# PANEL_MAX_IN_FEATURES inputs), and torch's F.linear on the weight converted to float32 above
# (kernels/row_rules.py).
KERNEL_MAX_ROWS = HALF_KERNEL_MAX_ROWS
PANEL_MAX_ROWS = HALF_PANEL_MAX_ROWS
PANEL_MAX_IN_FEATURES = HALF_PANEL_MAX_IN_FEATURES


def half_path(rows: int, in_features: int, out_features: int, isa: str) -> str:
    """"kernel", "panels", "amx" (all through :func:`half_linear`) or "torch" for ``rows`` rows of an
    ``in_features`` -> ``out_features`` layer on kernel level ``isa`` (the row rules above; "amx":
    row_rules.half_takes_amx; a small, narrow weight: row_rules.small_weight_takes_blas)."""
    if small_weight_takes_blas(rows, in_features, out_features, isa, fmt="half"):
        return "torch"
    if rows <= KERNEL_MAX_ROWS[isa]:
        return "kernel"
    if half_takes_amx(rows, out_features, isa):
        return "amx"
    return "panels" if rows <= PANEL_MAX_ROWS[isa] and in_features <= PANEL_MAX_IN_FEATURES[isa] else "torch"


#: half_linear's ``panels`` argument for each C path of half_path
_PATH_CODES = {"kernel": 0, "panels": 1, "amx": 2}


def path_code(path: str) -> int:
    """``panels=`` for :func:`half_linear` / :func:`half_linear_raw` on a C path of :func:`half_path`."""
    return _PATH_CODES[path]


def half_linear(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                panels: int = 0) -> torch.Tensor:
    """float32 ``x2d @ weight.T + bias`` on the CPU for a float32 ``x2d`` ``[m, k]`` and a
    float16 / bfloat16 ``weight`` ``[n, k]`` (non-contiguous inputs are copied first); the
    bias (any float dtype) is taken as float32.  Twin: ``F.linear(x2d, weight.float(), bias)``.
    ``panels``: 1 (or True) the panel path, 2 AMX-BF16 (fp32-accurate, not the other paths' bits;
    as 1 where the level has none); :func:`half_path` / :func:`path_code` say which for the rows
    and level.
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
    y = _C.h16_linear(x2d.detach().numpy(), w, is_bf16, bias=bias, nthreads=SETTINGS.num_threads(), panels=int(panels))
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


def half_linear_raw(x2d: torch.Tensor, w, is_bf16: bool, bias, panels: int = 0) -> torch.Tensor:
    """:func:`half_linear` on the arrays of :func:`half_linear_arrays` (``x2d`` float32, no grad)."""
    return torch.from_numpy(_C.h16_linear(x2d.numpy(), w, is_bf16, bias=bias, nthreads=SETTINGS.num_threads(),
                                          panels=int(panels)))
