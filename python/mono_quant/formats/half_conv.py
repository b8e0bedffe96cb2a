"""The fp16 / bf16 Conv2d route: which convs run a C kernel (``kernels.half_conv``) and
which keep torch's conv on the weight widened to float32 (``CastFormat.conv2d``).

Two C kernels (``kernels.half_conv.uses_direct`` picks between them): the direct conv
(csrc/h16_dconv.c: no im2col, output channels in vector lanes, an outer product per tap) and,
for few output pixels times a large weight, im2col rows times the 16-bit weight streamed once
(csrc/h16_conv.c).  Both beat torch's float32 conv (oneDNN) where oneDNN's per-call costs over
the weight and the image are not amortized: small outputs.  On large outputs oneDNN runs at
85-90% of the FMA units' peak, the direct kernel at about the same, and the 16-bit weight saves
no time (the weight is read once per call either way), so torch's conv keeps them (par).  So a
rule on the shapes, never a timing (the same input always takes the same path): at most
``MAX_OUTPUTS[isa]`` output elements (batch x out_h x out_w x out_channels; less with fewer
output channels per group than ``FULL_LANES[isa]``), or a 3x3 stride-1
conv that takes Winograd F(2x2, 3x3) (2.25x fewer multiply-adds: faster than oneDNN's direct
conv where the direct kernel is only at par) at the ``WINOGRAD_LEVELS``, or one that takes the
im2col GEMM (few output pixels times a large weight: the 16-bit weight streamed once), or (the
same levels) any conv of a weight torch's route would widen per call, a reduction
(in_channels/groups x kh x kw) of at least ``MIN_K`` and at least ``MIN_GROUP_OUT`` output
channels per group (the direct kernel's lanes: depthwise convs keep torch's).  Measured with
benchmarks/bench_fp16_conv.py (docs/benchmarks.md, "fp16 / bf16 Conv2d: the direct kernel").
The scalar level (no F16C) keeps torch's op.  The GEMM and the direct conv give torch's result
up to float32 rounding of each output's sum |w x| (another summation order), not the same bits
(which one a layer takes depends on the batch, as for torch's own conv algorithms); Winograd's
rounding error scales instead with the magnitudes of the weights and inputs across each 3x3
window, so one large input beside a pruned (zero) tap can make it many times larger there.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..kernels.conv_shape import conv_out_sizes
from ..kernels.direct_conv import direct_conv2d, float_conv_panels, live_bias, short_k_fits, wide_any_outputs
from ..kernels.fp16 import HALF_WEIGHT_DTYPES
from ..kernels import half_conv as half_conv_kernels
from ..kernels.half_conv import WINOGRAD_LEVELS, conv_algorithm, half_conv2d, half_conv2d_arrays, half_conv2d_raw
from ..kernels.settings import SETTINGS
from . import layer_cache
from .layer_cache import float_weight, pinned, weight_bias

__all__ = ["MAX_OUTPUTS", "FULL_LANES", "MIN_K", "MIN_GROUP_OUT", "WINOGRAD_LEVELS", "takes_half_conv",
           "layer_algorithm",
           "eager_half_conv", "kept_conv_route", "half_conv_forward",
           "traced_half_conv_forward"]

#: the most output elements (batch x out_h x out_w x out_channels) a conv runs a C kernel with,
#: per kernel level (AVX-512: up to 128->128 on 28x28 at batch 1; the AVX2 level: 64->64 on
#: 14x14, 16->16 on 28x28; measured against torch's AVX-512 fp32 conv on an AVX-512 host)
MAX_OUTPUTS = {"scalar": 0, "avx2": 12800, "avx512": 1 << 17}
#: ... for a conv of at least this many output channels per group: with fewer, the limit shrinks
#: in proportion (the AVX-512 direct kernel fills 64 lanes a pixel, 16 or 32 run at a fraction
#: of its speed: 16->16 on 8x8 at batch 64, 65536 outputs, took 1.23-1.33x fp32 time, 1.02 on
#: 64x64 at batch 1; 16 channels up to 40x40 0.81); the AVX2 kernel fills 16
FULL_LANES = {"scalar": 1, "avx2": 16, "avx512": 64}
#: the shortest reduction (in_channels/groups x kh x kw) that runs a C kernel (an RGB 3x3 conv; below
#: kernels.direct_conv.SHORT_K only on images of at most its SHORT_K_MAX_PIXELS output pixels: 3->64 on
#: 32x32 at batch 1 took 1.35x fp32's time, 3->16 on 16x16 at batch 4 0.54)
MIN_K = 27
#: the fewest output channels per group that run a C kernel (the direct kernel's 16 lanes)
MIN_GROUP_OUT = 16
# WINOGRAD_LEVELS (kernels.half_conv, where conv_algorithm reads it): the kernel levels where a
# conv runs Winograd, past MAX_OUTPUTS too, and so does the direct kernel for a weight past
# layer_cache.SMALL_WEIGHT_ELEMENTS (torch's route widens such a weight per call: 1.01-1.05x fp32
# time, the direct kernel 0.92-1.01x)


def takes_half_conv(module, x: torch.Tensor, isa: str) -> bool:
    """Whether QuantizedConv2d ``module`` (fp16 / bf16 weight) runs ``x`` through the C kernel:
    a non-empty float32 4-D CPU input with the layer's channels, a numeric padding, and the
    shape rule of this module's docstring."""
    weight = module._buffers["weight"]
    if (x.dtype != torch.float32 or weight.dtype not in HALF_WEIGHT_DTYPES or x.dim() != 4
            or x.device.type != "cpu" or weight.device.type != "cpu" or isinstance(module.padding2d, str)):
        return False
    if not all(type(size) is int for size in x.shape):
        return False  # symbolic sizes (export or compile with dynamic shapes): torch's conv, which guards none
    if x.shape[1] != module.in_channels or x.numel() == 0 or weight.numel() == 0:
        return False
    kh, kw = module.kernel_size2d
    k = module.in_channels // module.groups * kh * kw
    if k < MIN_K or module.out_channels // module.groups < MIN_GROUP_OUT:
        return False
    out_h, out_w = conv_out_sizes(x.shape[2:], module.kernel_size2d, module.stride2d, module.padding2d,
                                  module.dilation2d)
    if out_h <= 0 or out_w <= 0 or MAX_OUTPUTS[isa] <= 0:
        return False  # (no output, or the scalar level: no F16C, torch's op)
    if not short_k_fits(k, out_h * out_w):  # a stem on a large image: torch's conv
        return False
    if module.pointwise_on_kept_weight(x.shape[0] * out_h * out_w, isa):
        return False  # torch's conv on the kept float32 weight (an Intel CPU's oneDNN 1x1 conv)
    lanes = min(module.out_channels // module.groups, FULL_LANES[isa])
    if x.shape[0] * out_h * out_w * module.out_channels * FULL_LANES[isa] <= MAX_OUTPUTS[isa] * lanes:
        return True
    if wide_any_outputs(module.out_channels // module.groups, isa):  # (AMD: torch's conv never ahead there)
        return True
    algorithm = layer_algorithm(module, x, isa)
    if algorithm in ("gemm", "winograd"):  # (Winograd: conv_algorithm picks it at WINOGRAD_LEVELS only)
        return True
    # a large weight: torch's route widens it per call, the direct kernel (at oneDNN's speed) does not
    return (algorithm == "direct" and isa in half_conv_kernels.WINOGRAD_LEVELS
            and weight.numel() > layer_cache.SMALL_WEIGHT_ELEMENTS)


def layer_algorithm(module, x: torch.Tensor, isa: str) -> str:
    """kernels.half_conv.conv_algorithm for QuantizedConv2d ``module`` on ``x`` at level ``isa``,
    on what the kernel is given: a reflect / circular padding is padded by torch first (so the
    op path, half_conv2d on the padded input, picks the same)."""
    weight = module._buffers["weight"]
    shape, padding = tuple(x.shape), module.padding2d
    if module.padding_mode != "zeros":
        shape, padding = (*shape[:2], shape[2] + 2 * padding[0], shape[3] + 2 * padding[1]), (0, 0)
    return conv_algorithm(shape, weight.shape, module.stride2d, padding, module.dilation2d, module.groups, isa)


# Per module, the route last taken with what it depends on (x's shape, dtype and device, the
# kernel level, the layer's geometry, the weight and bias tensors: replaced, written in place
# or moved) and what that route takes: the kernel's arguments (NumPy views of the weight, the
# float32 bias), or for torch's conv the float32 weight of a small layer (layer_cache's copy,
# so kept once) and the float32 bias.  A small conv's whole call is ~15 us: the checks and
# conversions made once here were a third of it.  A weak map: deepcopy and state_dict never
# see it.
_MEMO = layer_cache.per_layer_cache()
_KERNEL, _TORCH, _PANELS = "kernel", "torch", "panels"


def eager_half_conv(module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The conv of a float32 CPU ``x`` in eager inference: through the C kernel when
    takes_half_conv says so, else through torch's conv on the weight widened to float32 (the
    same bits as CastFormat's general path, with less Python around it).  None for other
    inputs (the caller's general path).  Graph capture and autograd take
    traced_half_conv_forward / traced_forward.py instead."""
    weight, bias, tensors = weight_bias(module)
    key = (x.shape, x.dtype, x.is_cpu, SETTINGS.isa, tensors, module.kernel_size2d, module.stride2d,
           module.padding2d, module.dilation2d, module.groups, module.padding_mode)
    memo = _MEMO.get(module)
    if memo is None or memo[0] != key:
        memo = (key, *_choose(module, x, key[3], weight, bias), pinned(weight, bias))
        _MEMO[module] = memo
    route, args = memo[1], memo[2]
    if route is _PANELS:  # the direct conv on the layer's kept panels
        x, padding = _padded(module, x)
        return direct_conv2d(x, *args[0], module.stride2d, padding, module.dilation2d, module.groups, tap_major=False,
                             bias=args[1])
    if route is _KERNEL:
        x, padding = _padded(module, x)
        return half_conv2d_raw(x, *args[0], module.stride2d, padding, module.dilation2d, module.groups,
                               algorithm=args[1])
    if route is _TORCH:
        w = args[0]
        if w is None:  # a large weight: widened per call, into this thread's buffer where it may
            w = float_weight(module, weight.numel(), lambda: weight.float(), op_inputs=(x, args[1], weight),
                             fill=lambda: (weight.shape, lambda out: out.copy_(weight)))
        if module.padding_mode != "zeros" or isinstance(module.padding2d, str):
            return module.conv_with(x, w, args[1])
        return F.conv2d(x, w, args[1], module.stride2d, module.padding2d, module.dilation2d, module.groups)
    return None


def kept_conv_route(module, x: torch.Tensor) -> Optional[tuple]:
    """Where eager_half_conv runs a float32 CPU ``x`` (numeric zero padding) on what the layer keeps:
    ``("torch", F.conv2d's arguments after x)`` for torch's conv on the kept float32 weight of a
    small weight, ``("panels", (panels, bias lanes, live bias))`` for the direct conv on the kept
    panels (direct_conv2d's, tap_major=False), ``("kernel", (half_conv2d_raw's arrays, algorithm))``
    for the C kernels on the 16-bit weight; else None.  QuantizedConv2d keeps them as its route:
    the key and memo of eager_half_conv around them cost ~5-10 us a call (SqueezeNet's 1x1 convs
    took 0.8x fp32's speed)."""
    if (x.dtype != torch.float32 or not x.is_cpu or module.padding_mode != "zeros"
            or isinstance(module.padding2d, str)):
        return None
    weight, bias, _ = weight_bias(module)
    route, args = _choose(module, x, SETTINGS.isa, weight, bias)
    if route is _TORCH and args[0] is not None:
        return "torch", (args[0], args[1], module.stride2d, module.padding2d, module.dilation2d, module.groups)
    if route is _PANELS:
        return "panels", (*args[0][:2], args[1])
    if route is _KERNEL:
        return "kernel", args
    return None


def _choose(module, x: torch.Tensor, isa: str, weight: torch.Tensor, bias) -> tuple:
    """``(route, its arguments)`` for eager_half_conv."""
    if takes_half_conv(module, x, isa):
        algorithm = layer_algorithm(module, x, isa)
        if algorithm == "direct" and weight.numel() <= layer_cache.SMALL_WEIGHT_ELEMENTS:
            # a small weight widened once, not per call (a fifth of a 64-channel conv's time on 8x8 at batch 1);
            # the panels take the memory of the float copy torch's route keeps
            b = bias if bias is None or bias.dtype == torch.float32 else bias.float()
            return _PANELS, ((*float_conv_panels(weight, b, module.groups), module.out_channels,
                              tuple(module.kernel_size2d)), live_bias(b if b is module.bias else None))
        return _KERNEL, (half_conv2d_arrays(weight, bias), algorithm)
    if x.dtype != torch.float32 or not x.is_cpu or not weight.is_cpu or weight.dtype not in HALF_WEIGHT_DTYPES:
        return None, None
    numel = weight.numel()
    w = float_weight(module, numel, lambda: weight.float()) if numel <= layer_cache.SMALL_WEIGHT_ELEMENTS else None
    b = bias if bias is None or bias.dtype == torch.float32 else bias.float()
    return _TORCH, (w, b)


def _padded(module, x: torch.Tensor):
    """``(x, padding)`` for the kernel's zero padding: other padding modes padded by torch first."""
    if module.padding_mode != "zeros":
        return F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode), (0, 0)
    return x, module.padding2d


def half_conv_forward(module, x: torch.Tensor) -> torch.Tensor:
    """The conv of ``x`` through the C kernel (eager inference; see takes_half_conv)."""
    x, padding = _padded(module, x)
    return half_conv2d(x, module._buffers["weight"], module.bias, module.stride2d, padding, module.dilation2d,
                       module.groups)


def traced_half_conv_forward(module, x: torch.Tensor) -> torch.Tensor:
    """The same through the ``mono_quant::half_conv2d`` op (graph capture and autograd)."""
    x, padding = _padded(module, x)
    return torch.ops.mono_quant.half_conv2d(x, module._buffers["weight"], module.bias, list(module.stride2d),
                                            list(padding), list(module.dilation2d), module.groups)
