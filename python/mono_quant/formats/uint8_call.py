"""A uint8 Linear's common forward call (a float32 CPU input that records no gradient: the C
kernel, its panels, or torch's BLAS on the weight dequantized into this thread's buffer, by
row_rules.uint8_path) through NumPy views of its buffers kept per layer while they hold.

The general path (:func:`..kernels.uint8.uint8_linear`) converts the scale, zero-point and bias
on each call: ~25 us, half the kernel's time on a 768x768 layer at batch 1 (which then ran
slower than fp32).  The views are kept with the stamp (kernels/stamps.py) of what they were
made from, so a replaced or rewritten buffer or bias rebuilds them; the C call and its
arguments are the general path's own, so the same bits (the BLAS's weight the same values:
layer_cache.float_weight's, kept for a small weight, else made in this thread's buffer, as int4_call's).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import _C
from ..kernels.row_rules import uint8_path
from ..kernels.settings import SETTINGS
from ..kernels.stamps import make_stamp, tensors_unchanged
from ..kernels.uint8 import uint8_kernel_arrays, uint8_weight_takes
from . import layer_cache
from .layer_cache import per_layer_cache

__all__ = ["kept_uint8_linear"]

_CALLS = per_layer_cache()
_SOURCES = (("_buffers", "weight_qdata"), ("_buffers", "weight_scale"), ("_buffers", "weight_zero_point"),
            ("_parameters", "bias"), (None, "bias"), (None, "weight_axis"))


def _keep(module) -> tuple:
    stamp = make_stamp(module, _SOURCES)
    call = None
    if uint8_weight_takes(module):
        qdata, bias = module.weight_qdata, module.bias
        arrays = uint8_kernel_arrays(qdata, module.weight_scale, module.weight_zero_point, bias)
        call = (qdata.shape[1], qdata.shape[0], *arrays, None if arrays[3] is None else torch.from_numpy(arrays[3]))
    kept = (stamp, call)
    _CALLS[module] = kept
    return kept


def kept_uint8_linear(module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """``x @ W.T + b`` of a uint8 layer through the kept views, or None where the general
    path must run (another dtype or device, a gradient, an empty input, more rows)."""
    if x.dtype is not torch.float32 or not x.is_cpu or x.requires_grad:
        return None
    kept = _CALLS.get(module)
    if kept is None or not tensors_unchanged(module.__dict__, kept[0]):
        kept = _keep(module)
    call = kept[1]
    if call is None or x.dim() == 0 or x.shape[-1] != call[0] or x.numel() == 0:
        return None
    x2d = x if x.dim() == 2 else x.reshape(-1, call[0])
    path = uint8_path(x2d.shape[0], call[0], SETTINGS.isa)
    if path == "torch":
        # torch's BLAS on the float32 weight, as the general path and a traced graph's op compute it:
        # kept where it is small, else dequantized per call into this thread's buffer where it may
        w = layer_cache.float_weight(module, call[0] * call[1], lambda: module.format.dequantize(module, torch.float32),
                                     kept, op_inputs=(x2d, call[6]), fill=lambda: module.format.float_fill(module))
        y = F.linear(x2d, w, call[6])
    else:
        y = torch.from_numpy(_C.u8_linear(x2d.numpy(), *call[2:6], nthreads=SETTINGS.num_threads(),
                                          panels=path == "panels"))
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], call[1])
