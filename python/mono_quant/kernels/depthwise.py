"""The float32 depthwise Conv2d (csrc/float_depthwise.c) that QuantizedConv2d runs on a depthwise
layer's dequantized (or widened) weight, every format alike, and its torch.library op (graph
capture and autograd: the same kernel, so the same bits) and pure-torch twin.

A depthwise conv (one input channel per group) has too few multiply-adds per input value for int8
activations to pay: a quantized layer's result is torch's conv of the dequantized weight.  torch's
float32 conv of an NCHW image (oneDNN) runs these at 2-7 G multiply-adds a second on the AVX2 host
and pays ~100 us a call on small planes; through the C kernel (eight channels in the lanes, every tap
one vector load a pixel) quantized layers of MobileNetV2 / EfficientNet / ConvNeXt depthwise shapes ran
at 1.04-2.7x fp32's speed at batch 1 and 1.06-3.7x at batch 8 (1 thread), except 7x7 kernels at batch 8
(0.7-0.95: oneDNN keeps their weights in registers) (benchmarks/bench_depthwise_float.py,
docs/benchmarks.md, "Depthwise convs").  Results are torch's conv up to float32 rounding of each output's sum |w x| (another
summation order); the same bits at every kernel level and thread count.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import _C
from .direct_conv import conv_out_shape
from .half_conv import _half_conv2d_backward, _half_conv2d_setup
from .settings import SETTINGS

__all__ = ["depthwise_conv2d", "depthwise_conv2d_reference", "takes_depthwise", "LEVELS", "WIDE_TAPS",
           "WIDE_TAPS_MAX_BATCH", "MAX_PLANE"]

#: the kernel levels that run the C kernel (the scalar level keeps torch's conv: the reference loop is
#: no faster than it)
LEVELS = ("avx2", "avx512")
#: a kernel of more taps than this (7 x 7: ConvNeXt) runs the C kernel at batches up to
#: WIDE_TAPS_MAX_BATCH only: at batch 8 oneDNN, its weights in registers, was faster (0.69-0.95 of its
#: speed on 384 channels of 14 x 14, 768 of 7 x 7, 96 of 56 x 56; 1.24-3.6x at batch 1)
WIDE_TAPS = 25
WIDE_TAPS_MAX_BATCH = 1
#: the largest input plane (height x width) the kernel takes: each thread keeps a zero-padded copy of
#: eight planes (32 bytes a pixel), 32 MiB at this size; larger images keep torch's conv
MAX_PLANE = 1 << 20


def takes_depthwise(x: torch.Tensor, in_channels: int, out_channels: int, groups: int, kernel_size, stride,
                    padding, dilation, padding_mode: str, isa: Optional[str] = None) -> bool:
    """Whether a conv of this geometry runs :func:`depthwise_conv2d` on ``x`` (of NCHW strides: a
    channels_last ``x`` keeps torch's conv, which the callers check per call): a depthwise conv (one input
    channel per group, out_channels a multiple of it), a float32 4-D CPU ``x`` of concrete sizes and
    planes of at most :data:`MAX_PLANE` pixels, zero padding given as numbers, a kernel level of
    :data:`LEVELS`, and a kernel of at most :data:`WIDE_TAPS` taps or a batch of at most
    :data:`WIDE_TAPS_MAX_BATCH`.  On the shapes, never a timing.  ``isa``: the kernel level (None: the
    active one; the traced forward passes its compile-time constant)."""
    if (groups < 2 or in_channels != groups or out_channels % groups or padding_mode != "zeros"
            or isinstance(padding, str) or x.dtype != torch.float32 or x.dim() != 4 or not x.is_cpu
            or (SETTINGS.isa if isa is None else isa) not in LEVELS):
        return False
    if not all(type(size) is int for size in x.shape):
        return False  # symbolic sizes (export / compile with dynamic shapes): torch's conv, which guards none
    if x.shape[2] * x.shape[3] > MAX_PLANE:
        return False
    if kernel_size[0] * kernel_size[1] > WIDE_TAPS and x.shape[0] > WIDE_TAPS_MAX_BATCH:
        return False
    return all(size > 0 for size in conv_out_shape(x, out_channels, kernel_size, stride, padding, dilation)[2:])


def depthwise_conv2d(x: torch.Tensor, weight, bias, stride: Sequence[int], padding: Sequence[int],
                     dilation: Sequence[int]) -> torch.Tensor:
    """float32 NCHW depthwise conv of a float32 CPU NCHW ``x`` (zero padding) with ``weight`` (float32
    NumPy ``[out_channels, 1, kh, kw]``, out_channels a multiple of x's channels) and ``bias`` (float32
    NumPy ``[out_channels]`` or None).  Twin: :func:`depthwise_conv2d_reference`."""
    return torch.from_numpy(_C.depthwise_conv2d((x.detach() if x.requires_grad else x).numpy(), weight, bias,
                                                tuple(stride), tuple(padding), tuple(dilation),
                                                nthreads=SETTINGS.num_threads()))


def depthwise_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride,
                               padding, dilation) -> torch.Tensor:
    """The pure-torch twin: torch's conv in x's channels groups."""
    return F.conv2d(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), x.shape[1])


# -- the torch.library op (graph capture and autograd: the eager route's kernel, so the same bits) -------------

_LIB = torch.library.Library("mono_quant", "FRAGMENT")
# (groups: the same arguments as mono_quant::half_conv2d, whose backward it shares; always x's channels)
_LIB.define("depthwise_conv2d(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, "
            "int groups) -> Tensor")


def _op(x, weight, bias, stride, padding, dilation, groups):
    if groups != x.shape[1] or weight.shape[0] % groups or weight.shape[1] != 1:
        raise RuntimeError(f"mono_quant::depthwise_conv2d: a weight {list(weight.shape)} in {groups} groups does not "
                           f"fit an input of {x.shape[1]} channels (one input channel per group)")
    w = weight.detach().float().contiguous().numpy()
    b = None if bias is None else bias.detach().float().contiguous().numpy()
    return depthwise_conv2d(x.contiguous(), w, b, stride, padding, dilation)


def _op_fake(x, weight, bias, stride, padding, dilation, groups):
    return x.new_empty(conv_out_shape(x, weight.shape[0], weight.shape[2:], stride, padding, dilation),
                       dtype=torch.float32)


_LIB.impl("depthwise_conv2d", _op, "CPU")
torch.library.register_fake("mono_quant::depthwise_conv2d", _op_fake, lib=_LIB)
torch.library.register_autograd("mono_quant::depthwise_conv2d", _half_conv2d_backward,
                                setup_context=_half_conv2d_setup, lib=_LIB)
