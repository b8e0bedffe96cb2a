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
import torch.nn.functional as F

from ..kernels.fp16 import half_linear_arrays, half_linear_raw, half_path, path_code
from ..kernels.settings import SETTINGS
from . import layer_cache
from .layer_cache import per_layer_cache, pinned, weight_bias

__all__ = ["eager_half_linear"]

_MEMO = per_layer_cache()


def _kept_float(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> tuple:
    # torch's op on the weight widened once (exact), for a small weight where the row rules leave the kernel
    return weight.detach().float(), None if bias is None else bias.detach().float()


def eager_half_linear(module, x: torch.Tensor, takes) -> Optional[torch.Tensor]:
    """``x @ W.T + b`` through the C kernel when ``takes(x, weight, isa)`` (cast.takes_half_kernel)
    says so; where its row rules send the call to torch's op instead (``half_path``: "torch") and the
    weight is small (``layer_cache.SMALL_WEIGHT_ELEMENTS``), ``F.linear`` on the float32 weight kept
    here, as the general path and a traced graph's op compute it; else None (the caller's general
    path).  Eager inference only."""
    weight, bias, tensors = weight_bias(module)
    key = (x.shape, x.dtype, x.is_cpu, x.requires_grad, SETTINGS.isa, SETTINGS.amx, tensors)
    memo = _MEMO.get(module)
    if memo is None or memo[0] != key:
        memo = _make_memo(key, x, weight, bias, takes)
        _MEMO[module] = memo
    k = weight.shape[1] if weight.dim() == 2 else 0
    if memo[1] is not None:
        x2d = x if x.dim() == 2 else x.reshape(-1, k)
        y = half_linear_raw(x2d.detach() if x.requires_grad else x2d, *memo[1], panels=memo[3])
    elif memo[4] is not None:
        x2d = x if x.dim() == 2 else x.reshape(-1, k)
        y = F.linear(x2d, *memo[4])
    else:
        return None
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], weight.shape[0])


def _make_memo(key: tuple, x: torch.Tensor, weight: torch.Tensor, bias, takes) -> tuple:
    """(key, the kernel's arrays or None, the pinned tensors, the kernel path's code, the kept float32
    weight and bias or None)."""
    isa = key[4]
    if not takes(x, weight, isa, any_rows=True):  # not the kernel's call whatever the rows
        return key, None, pinned(weight, bias), 0, None
    rows = x.numel() // weight.shape[1]
    path = half_path(rows, weight.shape[1], weight.shape[0], isa)
    if path != "torch":
        return key, half_linear_arrays(weight, bias), pinned(weight, bias), path_code(path), None
    kept = _kept_float(weight, bias) if weight.numel() <= layer_cache.SMALL_WEIGHT_ELEMENTS else None
    return key, None, pinned(weight, bias), 0, kept
