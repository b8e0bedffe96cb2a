"""Tensors read from a file, aligned to their element size.

safetensors places each tensor at the data section's start plus its offset, and the
data section starts right after the header: a header whose length is not a multiple
of 8 (another writer, a hand-edited manifest) gives int32 / float32 tensors at odd
addresses.  torch copes; the C kernels read typed pointers (misaligned: undefined
behaviour; the bindings copy such an input on every call).  One copy at load instead.

Floating-point tensors (the layers kept float, biases, norms, fp16/bf16 weights) go to torch's
own matmuls, whose results depend on the address: BLAS takes another path for a weight that
is not at the 64-byte alignment torch's CPU allocator gives (a float64 Linear at +40 bytes, a
float32 one at +8 at batch 1, gave other low bits), so a loaded model's outputs were not
bit-identical to the saved model's.  They are copied to that alignment."""
from __future__ import annotations

import torch

__all__ = ["aligned"]


_TORCH_ALIGNMENT = 64  # bytes: c10's CPU allocator alignment (gAlignment)


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it at an address that is a multiple of its element size (of 64 bytes,
    as a tensor torch allocates, for a floating-point tensor)."""
    alignment = _TORCH_ALIGNMENT if t.is_floating_point() else t.element_size()
    return t if t.data_ptr() % alignment == 0 else t.clone(memory_format=torch.contiguous_format)
