"""An int4 layer's common forward call (a float32 CPU input that records no gradient: the
packed kernel, or torch's BLAS on the dequantized weight for the rows of
``row_rules.int4_takes_blas``) through NumPy views of its buffers kept per layer while they hold.

The general path (:func:`.int4_weight.int4_linear`) builds the layer's Int4Weight and
converts every buffer and the bias on each call: 10-20 us, as much as the kernel of a
768x768 layer at batch 1, where int4 then ran no faster than fp32.  The views are kept with
the stamp (kernels/stamps.py) of what they were made from, so a replaced or rewritten
buffer or bias rebuilds them; the C call and its arguments are the general path's own.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..kernels.int4 import q4_linear_arrays
from ..kernels.rows import to_numpy
from ..kernels.settings import SETTINGS
from ..kernels.stamps import make_stamp, tensors_unchanged
from ..kernels.row_rules import int4_takes_blas
from . import layer_cache
from .layer_cache import per_layer_cache

__all__ = ["kept_int4_linear"]

_CALLS = per_layer_cache()
_SOURCES = (("_buffers", "weight_qdata"), ("_buffers", "weight_scale"), ("_buffers", "weight_zero_point"),
            ("_parameters", "bias"), (None, "bias"), (None, "weight_group_size"), (None, "weight_shape"))


def _keep(module) -> tuple:
    stamp = make_stamp(module, _SOURCES)
    weight, bias = module.format.module_weight(module), module.bias
    call = None
    if weight.qdata.is_cpu and weight.qdata.numel() > 0 and (bias is None or bias.is_cpu):
        b = None if bias is None else bias.detach().float().contiguous().numpy()
        call = (weight.cols, weight.orig_shape[0], weight.qdata.numpy(), to_numpy(weight.scale),
                weight.zero_point.numpy(), weight.group, b, None if b is None else torch.from_numpy(b))
    kept = (stamp, call)
    _CALLS[module] = kept
    return kept


def kept_int4_linear(module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """``x @ W.T + b`` of an int4 layer through the kept views, or None where the general
    path must run (another dtype or device, a gradient, an empty input, another width)."""
    if x.dtype is not torch.float32 or not x.is_cpu or x.requires_grad:
        return None
    kept = _CALLS.get(module)
    if kept is None or not tensors_unchanged(module.__dict__, kept[0]):
        kept = _keep(module)
    call = kept[1]
    if call is None or x.shape[-1] != call[0] or x.numel() == 0:
        return None
    x2d = x if x.dim() == 2 else x.reshape(-1, call[0])
    int8_activations = module.activations == "dynamic" and SETTINGS.int4_int8_activations  # (None: weight-only)
    if int4_takes_blas(x2d.shape[0], call[1], call[2].shape[1] * 2, call[5], SETTINGS.isa,
                       int8_activations, in_features=call[0]):
        # torch's BLAS on the float32 weight, as the general path and a traced graph's op compute it:
        # kept where it is small, else dequantized per call into this thread's buffer where it may
        numel = call[1] * call[0]
        w = layer_cache.float_weight(
            module, numel, lambda: module.format.module_weight(module).dequantize(), kept, op_inputs=(x2d, call[7]),
            fill=lambda: module.format.float_fill(module))
        y = F.linear(x2d, w, call[7])
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], call[1])
    y = torch.from_numpy(q4_linear_arrays(x2d.contiguous().numpy(), call[2], call[3], call[4], call[5], bias=call[6],
                                      int8_activations=-1 if int8_activations else 0,
                                      nthreads=SETTINGS.num_threads()))
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], call[1])
