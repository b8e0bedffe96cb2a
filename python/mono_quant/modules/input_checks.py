"""Checks every quantized layer makes of its input before any kernel sees it."""
from __future__ import annotations

import torch

from ..kernels.torch_library import refuse_fx_proxy

__all__ = ["refuse_non_dense", "check_float_input", "check_conv_channels", "strides_like_channels_last"]


def check_float_input(x: torch.Tensor, layer: str) -> None:
    """Raise RuntimeError for a non-floating input, as the float layer does (the
    kernels would otherwise convert integers and return a result the float model never gives)."""
    refuse_fx_proxy(x, layer)
    if not x.is_floating_point():
        raise RuntimeError(f"{layer}: expected a floating-point input, got {x.dtype} (the float layer raises "
                           f"for it too); convert it first, e.g. x.float()")


def refuse_non_dense(x, layer: str) -> None:
    """Raise TypeError for a sparse or nested input (the float layer takes them): the kernels read a
    strided tensor's memory, and each route failed on its own terms ("can't convert Sparse layout
    tensor to numpy", "reshape is not implemented for sparse tensors", "view(): cannot view shape (2,
    j1, 256)").  Called where such an error was raised: nothing on the calls that succeed."""
    if isinstance(x, torch.Tensor) and (x.is_nested or x.layout is not torch.strided):
        what = "nested" if x.is_nested else f"{x.layout} (sparse)".replace("torch.", "")
        fix = "x.to_padded_tensor(0.0), or each tensor of it" if x.is_nested else "x.to_dense()"
        raise TypeError(f"{layer}: a {what} input; quantized layers take dense (strided) tensors: pass {fix}")


def check_conv_channels(x: torch.Tensor, conv) -> None:
    """Raise RuntimeError, in torch's words, for a batched input whose channels are not the
    conv's in_channels (routes that never reach F.conv2d, such as the direct kernel, would
    otherwise fail on their own buffers' sizes, a message about internals)."""
    if x.dim() == 4 and x.shape[1] != conv.in_channels:
        weight = [conv.out_channels, conv.in_channels // conv.groups, *conv.kernel_size2d]
        raise RuntimeError(f"Given groups={conv.groups}, weight of size {weight}, expected input{list(x.shape)} to "
                           f"have {conv.in_channels} channels, but got {x.shape[1]} channels instead")
    if x.dim() == 4 and not isinstance(conv.padding2d, str):  # (unfold's "sliding blocks (2, -2)" otherwise)
        padded = [x.shape[2 + i] + 2 * conv.padding2d[i] for i in range(2)]
        reach = [conv.dilation2d[i] * (conv.kernel_size2d[i] - 1) + 1 for i in range(2)]
        if padded[0] < reach[0] or padded[1] < reach[1]:
            raise RuntimeError(f"Calculated padded input size per channel: ({padded[0]} x {padded[1]}). Kernel size: "
                               f"({reach[0]} x {reach[1]}). Kernel size can't be greater than actual input size")


def strides_like_channels_last(x: torch.Tensor) -> bool:
    """Whether torch's conv would give ``x`` a channels_last result: a 4-D tensor whose strides
    rank channels, width, height, batch from the innermost (c10's is_channels_last_strides_2d,
    ties of size-1 dimensions included: a one-channel channels_last input counts)."""
    if x.dim() != 4 or x.stride(1) == 0:
        return False
    sizes, strides = x.shape, x.stride()
    least = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < least:
            return False
        if d == 0 and least == strides[1]:  # N x 1 x 1 x 1: contiguous, as torch takes it
            return False
        least = strides[d] * sizes[d] if sizes[d] > 1 else strides[d]
    return True
