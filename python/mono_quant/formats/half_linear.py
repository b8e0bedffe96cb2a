"""The fp16 / bf16 Linear's eager route with its per-layer preparation kept: which inputs run
the C kernel is ``cast.takes_half_kernel``'s rule; this keeps, per module, that answer for
the last input shape, the kernel's arguments (NumPy views of the weight, the float32 bias) and
which of its paths those rows take (``kernels.fp16.half_path``), rebuilt when the weight or
bias is replaced, written in place or moved.  A small layer's
whole call (a classifier head on a batch-1 CNN) is ~4 us in fp32: re-deciding and converting
per call (~7 us) made it 2.6x slower than fp32 (bench_models.py, cnn16x8-b1)."""
from __future__ import annotations

from typing import Optional

import torch

from ..kernels.fp16 import half_linear_arrays, half_linear_raw, half_path, path_code
from ..kernels.settings import SETTINGS
from .layer_cache import per_layer_cache, pinned, weight_bias

__all__ = ["eager_half_linear"]

_MEMO = per_layer_cache()


def eager_half_linear(module, x: torch.Tensor, takes) -> Optional[torch.Tensor]:
    """``x @ W.T + b`` through the C kernel when ``takes(x, weight, isa)`` (cast.takes_half_kernel)
    says so, else None (the caller's general path).  Eager inference only."""
    weight, bias, tensors = weight_bias(module)
    key = (x.shape, x.dtype, x.is_cpu, x.requires_grad, SETTINGS.isa, SETTINGS.amx, tensors)
    memo = _MEMO.get(module)
    if memo is None or memo[0] != key:
        rows = x.numel() // weight.shape[1] if weight.dim() == 2 and weight.shape[1] else 0
        path = half_path(rows, key[4])
        memo = (key, half_linear_arrays(weight, bias) if takes(x, weight, key[4]) else None, pinned(weight, bias),
                path_code(path) if path != "torch" else 0)
        _MEMO[module] = memo
    if memo[1] is None:
        return None
    k = weight.shape[1]
    x2d = x if x.dim() == 2 else x.reshape(-1, k)
    y = half_linear_raw(x2d.detach() if x.requires_grad else x2d, *memo[1], panels=memo[3])
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], weight.shape[0])
