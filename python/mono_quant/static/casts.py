"""Static int8 models stay float32 on the CPU: their kernels take int8 codes, float32 scales and
biases as NumPy arrays.  ``.half()``, ``.double()``, ``.bfloat16()``, ``.to(dtype)`` and
``.to("meta")`` / another device are refused before anything is converted (they used to convert
the scales and biases and fail on the next call, or half-way through the cast with torch's
"Got unsupported ScalarType BFloat16"); ``.float()``, ``.cpu()`` and ``.to(torch.float32)`` pass."""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["refuse_casts"]


def refuse_casts(fn: Callable[[torch.Tensor], torch.Tensor], what: str) -> None:
    """TypeError when the ``_apply`` function ``fn`` would move a float32 CPU tensor elsewhere
    (probed on a one-element tensor: ``fn`` is torch's closure, it says nothing else)."""
    probe = fn(torch.zeros(1))
    if not isinstance(probe, torch.Tensor) or (probe.dtype, probe.device.type) == (torch.float32, "cpu"):
        return
    raise TypeError(f"{what} computes with int8 activations and float32 scales on the CPU: it can't become "
                    f"{str(probe.dtype).replace('torch.', '')} on {probe.device}; cast its inputs and outputs "
                    f"instead, or quantize with dynamic activations (mono_quant.quantize(model, 'int8')), whose "
                    f"layers follow .to() / .half()")
