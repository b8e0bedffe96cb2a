"""The uint8 weight-only Linear (csrc/u8_linear.c): float32 activations times the stored uint8
weight minus its zero-points, widened to float32 in registers, so a call at a few rows reads a
quarter of a float32 layer's bytes and converts nothing whole; at more rows its panel path (each
16-channel panel widened once per block of rows), then torch's BLAS on the dequantized weight
(row_rules.uint8_path).  One function for the eager forward and the traced graphs' op
(torch_library's ``uint8_linear``): the same path and bits at each row count."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import _C
from .row_rules import uint8_path
from .rows import dequantize_rows
from .settings import SETTINGS

__all__ = ["uint8_linear", "uint8_weight_takes", "uint8_layer_takes", "uint8_kernel_arrays"]


def uint8_weight_takes(module) -> bool:
    """Whether a uint8 QuantizedLinear's weight suits :func:`uint8_linear`: a 2-D uint8 ``weight_qdata``
    ``[n, k]`` (k > 0) per output channel or per tensor, its scale, zero-point and bias on the CPU."""
    qdata, scale, bias = module._buffers.get("weight_qdata"), module.weight_scale, module.bias
    return (qdata is not None and qdata.dtype == torch.uint8 and qdata.dim() == 2 and qdata.shape[1] > 0
            and getattr(module, "weight_axis", None) in (0, None) and scale.numel() in (1, qdata.shape[0])
            and qdata.is_cpu and scale.is_cpu and module.weight_zero_point.is_cpu and (bias is None or bias.is_cpu))


def uint8_layer_takes(module, x: torch.Tensor) -> bool:
    """Whether a uint8 QuantizedLinear's forward on ``x`` runs :func:`uint8_linear` (eager) or its
    op (traced graphs): :func:`uint8_weight_takes`, and a float CPU ``x`` of ``k`` features."""
    return (x.dim() >= 1 and x.is_cpu and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and uint8_weight_takes(module) and x.shape[-1] == module.weight_qdata.shape[1])


def uint8_kernel_arrays(qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                        bias: Optional[torch.Tensor]) -> tuple:
    """``(q, scale, zero_point, bias)`` as the C kernel takes them (NumPy views where the tensors
    allow: uint8 ``[n, k]``, float32 and int32 of ``n`` or 1 values, float32 ``[n]`` or None); a
    caller may keep them per layer (formats/uint8_call.py)."""
    return (qdata.detach().numpy(), scale.detach().to(torch.float32).reshape(-1).numpy(),
            zero_point.detach().to(torch.int32).reshape(-1).numpy(),
            None if bias is None else bias.detach().float().contiguous().numpy())


def uint8_linear(x2d: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                 bias: Optional[torch.Tensor]) -> torch.Tensor:
    """float32 ``x2d @ ((qdata - zero_point) * scale).T + bias`` for ``x2d`` ``[m, k]`` (float32,
    float16 or bfloat16, no grad) and a uint8 ``qdata`` ``[n, k]`` on the CPU, scale (float32) and
    zero-point (int32) of ``n`` or 1 values.  By row_rules.uint8_path: the C kernel or its panels
    (each channel's sum scaled once), or ``F.linear`` on the dequantized weight: equal to fp32
    rounding."""
    x = x2d if x2d.dtype == torch.float32 else x2d.float()
    if x.shape[0] == 0:  # (torch.from_numpy of an empty array has strides (0, 0); F.linear gives (n, 1))
        return x.new_empty((0, qdata.shape[0]))
    path = uint8_path(x.shape[0], x.shape[-1], SETTINGS.isa)
    if path == "torch":
        return F.linear(x, dequantize_rows(qdata, scale, zero_point), None if bias is None else bias.detach().float())
    y = _C.u8_linear(x.detach().numpy(), *uint8_kernel_arrays(qdata, scale, zero_point, bias),
                     nthreads=SETTINGS.num_threads(), panels=path == "panels")
    return torch.from_numpy(y)
