"""A per-thread float32 buffer for a weight made per call for torch's op (a large int8 weight-only
weight dequantized for a Linear's BLAS path or a conv's torch route, a large fp16 / bf16 one widened,
a large int4 one dequantized for the general path: copied in, its fresh tensor dropped before the op):
reused from call to call instead of a fresh tensor each time.  A fresh tensor of some megabytes comes
from new pages, and every page is faulted in on first touch: on a KVM guest (AMD EPYC Zen 3, 2 December
2026) about 2.5 us a page, 1400-2900 faults per call of a ResNet-18 3x3 conv (256 -> 256 on 14x14: 7.1 ms
where the dequantize and torch's conv took 3.6 ms from a kept buffer, fp32 2.8 ms).

Only for eager calls that record no autograd (the caller's op neither saves nor returns the
weight: the next call on this thread overwrites it), and for weights of at most
SCRATCH_MAX_ELEMENTS elements (a thread keeps the largest it has seen, 16 MiB at most).
"""
from __future__ import annotations

import math
import threading
from typing import Optional, Sequence

import torch

__all__ = ["SCRATCH_MAX_ELEMENTS", "float_scratch"]

#: the largest weight (float32 elements) made in the per-thread buffer; larger ones get a fresh tensor
SCRATCH_MAX_ELEMENTS = 1 << 22

_LOCAL = threading.local()


def float_scratch(shape: Sequence[int], *op_inputs: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A contiguous float32 CPU tensor of ``shape`` in this thread's buffer (its values left over
    from the last call), or None past SCRATCH_MAX_ELEMENTS, where one of ``op_inputs`` (the
    tensors of the op that takes it, None allowed) is not on the CPU, or where autograd would
    record that op (grad mode on and one of them requires grad: a weight saved for backward
    must not be overwritten by the next call)."""
    numel = math.prod(shape)
    if numel > SCRATCH_MAX_ELEMENTS or any(t is not None and not t.is_cpu for t in op_inputs) or (
            torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in op_inputs)):
        return None
    buf = getattr(_LOCAL, "buf", None)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # (a normal tensor: written in place in and out of inference mode)
            buf = torch.empty(numel, dtype=torch.float32)
        _LOCAL.buf = buf
    return buf[:numel].view(*shape)
