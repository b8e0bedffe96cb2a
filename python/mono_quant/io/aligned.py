"""Tensors read from a file, aligned to their element size.

safetensors places each tensor at the data section's start plus its offset, and the
data section starts right after the header: a header whose length is not a multiple
of 8 (another writer, a hand-edited manifest) gives int32 / float32 tensors at odd
addresses.  torch copes; the C kernels read typed pointers (misaligned: undefined
behaviour; the bindings copy such an input on every call).  One copy at load instead."""
from __future__ import annotations

import torch

__all__ = ["aligned"]


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it at an address that is a multiple of its element size."""
    return t if t.data_ptr() % t.element_size() == 0 else t.clone()
