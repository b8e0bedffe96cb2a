"""Wrappers over the direct Conv2d on panels (csrc/h16_dconv.c, the fp16 direct conv's kernel: the
same tiles and sum order) for the convs whose weight is kept as panels, or filled per call:
a packed int8 weight dequantized (weight-only int8: float32 activations), a float32 weight (an
int4 layer's dequantized weight), or an fp16 / bf16 one widened; and their pure-torch twin.

torch's fp32 conv (oneDNN) pays per-call costs over the weight and the image that dominate a
small conv (~20-50 us), and before this route an integer layer ran it on a weight dequantized
per call past ``layer_cache.SMALL_WEIGHT_ELEMENTS`` (more than the conv itself).  On kept panels
(a small weight's: the memory of the float copy they replace) the kernel runs the small convs
in 0.5-0.8 of fp32's time, and widening the 16-bit weight per call was a fifth of an fp16 conv's
(docs/benchmarks.md, "Small convs on kept panels").  Results are torch's conv of the
dequantized (widened) weight up to float32 rounding of each output's sum |w x| (another
summation order); the same bits at every kernel level and thread count, and kept or filled per
call."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import _C
from .conv_shape import conv_out_sizes
from .half_conv import _half_conv2d_backward, _half_conv2d_setup
from .row_rules import BLAS_AVX512, SMALL_L1D
from .settings import SETTINGS

__all__ = ["int8_conv_arrays", "int8_conv_panels", "float_conv_panels", "direct_conv2d", "live_bias", "direct_conv2d_int8",
           "direct_conv2d_int4",
           "direct_conv2d_reference", "conv_out_shape", "MAX_OUTPUTS", "LARGE_WEIGHT_OUTPUTS_FACTOR", "FEW_OUT_LANES",
           "MIN_K",
           "FILL_ELEMENTS_PER_PIXEL", "FILL_MAX_ELEMENTS", "SHORT_K", "SHORT_K_MAX_PIXELS", "short_k_fits",
           "WIDE_ANY_OUTPUTS_ON_THIS_CPU", "WIDE_OUT_CHANNELS", "WIDE_LEVELS", "wide_any_outputs", "GROUPED_MAX_OUTPUTS",
           "GROUPED_NARROW_MAX_OUTPUTS", "GROUPED_MAX_OUT_CHANNELS", "GROUPED_NARROW_OUT_CHANNELS", "grouped_max_outputs",
           "POINTWISE_TORCH_LEVELS", "POINTWISE_TORCH_MAX_PIXELS", "pointwise_takes_torch"]

#: the most output elements (batch x out_h x out_w x out_channels) an integer layer's conv (weight-only
#: int8, int4) runs the direct kernel with, per kernel level: past them torch's conv, batched over more pixels, is as fast or
#: faster (1 December 2026, Intel Xeon with AMX, 1 and 2 threads: 32->32 channels on 8x8 at batch 8,
#: 16384 outputs, 0.72-0.81 of fp32's time, at batch 16 0.97-1.23; 16->32 on 32x32 at batch 1,
#: 32768, 0.72-0.80; the AVX2 level against torch's AVX-512 conv: 0.55-0.81 at 16384, 1.12 for
#: 64->64 on 16x16).  The scalar level keeps torch's conv.
MAX_OUTPUTS = {"scalar": 0, "avx2": 8192, "avx512": 24576}
#: ... times this for a weight past ``layer_cache.SMALL_WEIGHT_ELEMENTS``, whose float copy is not kept:
#: torch's conv then runs on the weight dequantized per call, the direct kernel on panels filled per
#: call from the int8 bytes (2 threads, time / fp32: 64->128 channels on 16x16 at batch 1, 32768
#: outputs, 1.04 against 1.79; on 8x8 at batch 16, 131072 outputs, 1.15 against 1.29)
LARGE_WEIGHT_OUTPUTS_FACTOR = 4
#: A conv of fewer output channels per group than this counts its outputs as this many (the kernel's
#: narrowest tile computes them all, the rest of its lanes wasted), as the fp16 route counts lanes.
#: AMD Zen 5 (2 Dec 2026, 2 threads, time / fp32, direct kernel -> torch's conv): 64 -> 1 / 2 3x3 on
#: 16x16 at batch 8 weight-only 1.70 / 2.12, int4 1.77 / 1.92 -> 0.99-1.02; 64 -> 4 / 8 1.13-1.19 -> 1.01;
#: 64 -> 2 1x1 on 32x32 1.39-1.42 -> 1.01; at batch 1 the kernel keeps them (0.57-0.98 against 1.02-1.03).
FEW_OUT_LANES = 16
#: a weight-only conv of few output pixels (at most out_channels / 8, where the packed int8 kernel, one pass
#: over the weight, would take it) runs the direct kernel on kept panels, or on panels filled per call from
#: one output pixel per this many weight elements (2 threads, 2 December 2026, Intel Xeon, microseconds,
#: packed / direct: 128->128 on 1x1 61 / 56, 2x2 83 / 57; 128->256 on 2x2 101 / 135, 3x3 152 / 105;
#: 256->256 on 3x3 221 / 218; 64->128 on 4x4 105 / 46, fp32 54)
FILL_ELEMENTS_PER_PIXEL = 65536
#: ... and only for weights of fewer elements than this (per kernel level; the packed kernel past it):
#: the filled float32 panels of a larger weight pass an L2 of 512 KiB several times over.  AMD Zen 3 (3 Dec
#: 2026, AVX2, 32 KiB L1D, time / fp32 at 1 / 2 threads, direct against packed): 512 -> 512 3x3 on 7x7 at
#: batch 1 1.23-1.29 against 0.91; 256 -> 512 on 4x4 at batch 2 1.20 / 1.03 against 0.83 / 0.76, batch 4
#: 1.16-1.21 against 1.03-1.04; 512 -> 1024 1x1 on 4x4 1.18 against 0.99; 256 -> 256 3x3 (590k) on 4x4 /
#: 5x5 1.00 / 0.73 against 0.93 / 0.70 (2 threads 1.43 / 0.95 against 1.21 / 0.84); below it mixed or the
#: direct kernel ahead (128 -> 256 3x3 on 4x4, 2 threads: 1.23 against 1.75).  Other CPUs: not measured.
FILL_MAX_ELEMENTS = {"scalar": 0, "avx2": (1 << 19) if SMALL_L1D else 1 << 62, "avx512": 1 << 62}
#: the shortest reduction (in/groups x kh x kw) that runs the direct kernel: an RGB 3x3 stem (27 taps),
#: within MAX_OUTPUTS: torch's conv pays its per-call costs on few multiply-adds there (2 threads, 2
#: December 2026, Intel Xeon, time / fp32: 3->16 / 3->32 / 3->64 on 8x8 at batch 1 0.23 / 0.26 / 0.34,
#: on 16x16 0.41 / 0.40 / 0.52, 3->16 on 32x32 0.73; past MAX_OUTPUTS it loses: 3->64 on 32x32 1.11,
#: 3->64 on 8x8 at batch 64 1.24)
MIN_K = 27
#: ... and a reduction shorter than this (a stem) only on images of at most SHORT_K_MAX_PIXELS output
#: pixels: on 32x32 torch's conv held its own (3->16 / 3->32 on 32x32 at batch 1: 1.01-1.03 weight-only,
#: fp16 1.11-1.17), on 16x16 and below it did not (3->16 on 16x16 at batch 4: 0.49)
SHORT_K = 64
SHORT_K_MAX_PIXELS = 256


#: On CPUs other than Intel's, at the AVX-512 level, a conv of at least WIDE_OUT_CHANNELS output channels
#: per group runs the direct kernel whatever its output count (MAX_OUTPUTS, and the fp16 route's, were set
#: against Intel's oneDNN).  AMD Zen 5 (2 Dec 2026, 2 threads, time / fp32, the limits against none):
#: cnn64x16-b64 weight-only / int4 / fp16 1.04 / 0.95 / 0.94 -> 0.69 / 0.71 / 0.72, cnn64x32-b1 0.88 /
#: 1.02 / 0.77 -> 0.73 / 0.81 / 0.75; convs of 16-32 outputs lost without the limits (cnn16x8-b64
#: 0.96-0.99 -> 1.08-1.15, cnn32x32-b64 0.89-0.92 -> 0.97-1.00): they keep them
WIDE_ANY_OUTPUTS_ON_THIS_CPU = _C.cpu_info().get("vendor") != "GenuineIntel"
WIDE_OUT_CHANNELS = 64
WIDE_LEVELS = ("avx512",)


#: A grouped conv (groups > 1) of few output channels per group (RegNet's group width 8, ResNeXt's 4) runs
#: the direct kernel up to this many output elements at the AVX2 level, whatever MAX_OUTPUTS says for its
#: lanes: torch's grouped conv of narrow groups pays ~90 us a call even on one pixel.  AMD Zen 3 (6 Dec 2026,
#: time / fp32's conv, 3x3, batch 1 and 8, 8x8 and 32x32 images, 1 / 2 threads), the direct kernel at group
#: width 8-16: 1.2-4.1x up to 32768 outputs, 0.96-1.4x at 65536, 0.64-3.0x (mostly behind) from 131072;
#: RegNet-Y-400MF's grouped convs at 128x128 (48 channels on 32x32 ... 440 on 4x4) 1.2-2.1x where torch's conv
#: on the kept weight ran 0.95-0.99x; at group width 4 1.9-3.3x up to 262144 outputs.  Not measured on
#: AVX-512 hosts (their MAX_OUTPUTS rule stays).  Intel Xeon with AMX (6 Dec 2026, 1 thread, oneDNN's AVX-512
#: grouped conv is quicker there): up to 16384 outputs the kernel is ahead or level (RegNet-Y's 208 channels on 8x8
#: 0.97-0.98 -> 1.04-1.07), past it behind (48 channels on 32x32 0.65-0.69, group width 4 on 8x8 at batch 8
#: 0.45-0.47); the whole RegNet-Y-400MF at 128x128 1.00-1.05 -> 1.08-1.14 (2 threads: 0.84 -> 0.91 weight-only).
GROUPED_MAX_OUTPUTS = {"avx2": 65536, "avx512": 16384}
GROUPED_NARROW_MAX_OUTPUTS = {"avx2": 262144, "avx512": 16384}
GROUPED_MAX_OUT_CHANNELS = 16  # per group
GROUPED_NARROW_OUT_CHANNELS = 4  # per group


def grouped_max_outputs(groups: int, out_channels_per_group: int, isa: str) -> int:
    """The most output elements a grouped conv of ``groups`` groups and ``out_channels_per_group`` runs the
    direct kernel with at kernel level ``isa`` by GROUPED_MAX_OUTPUTS (0: the rule does not apply)."""
    if groups < 2 or out_channels_per_group > GROUPED_MAX_OUT_CHANNELS:
        return 0
    table = GROUPED_NARROW_MAX_OUTPUTS if out_channels_per_group <= GROUPED_NARROW_OUT_CHANNELS else GROUPED_MAX_OUTPUTS
    return table.get(isa, 0)


#: Where torch runs MKL / oneDNN's AVX-512 code (row_rules.BLAS_AVX512: Intel CPUs), at these kernel levels, a
#: 1x1 conv of stride 1 and no padding on at most POINTWISE_TORCH_MAX_PIXELS output pixels (batch x h x w) whose
#: float32 weight the layer keeps (a small weight) runs torch's conv on that weight, fp32's own call, not the
#: direct kernel: a GEMM of few rows, which oneDNN's 1x1 conv runs faster.  Intel Xeon with AMX (6 Dec 2026, time /
#: fp32, weight-only on the direct kernel -> torch's conv on the kept weight, 2 threads): 208 -> 208 on 8x8 0.71 ->
#: 1.21, 128 -> 48 0.89 -> 1.31, 320 -> 40 0.78 -> 1.35, 40 -> 240 0.89 -> 1.21, 384 -> 64 on 4x4 1.07 -> 1.57,
#: 576 -> 96 0.93 -> 1.40 (fp16 alike; 1 thread: 0.78-0.98 -> 1.18-1.31).  On more pixels torch's conv of few
#: outputs runs 3-5x slower on 2 threads than on one (96 -> 24 on 16x16 84 us against 18, 64 -> 16 on 31x31 92
#: against 27: fp32's too), where the direct kernel is 2-3.7x fp32's speed: they keep it.  (torch's conv here is
#: F.conv2d against nn.Conv2d's call: above 1.0 by the module's Python.)  Other CPUs: not measured.
POINTWISE_TORCH_LEVELS = ("avx512",) if BLAS_AVX512 else ()
POINTWISE_TORCH_MAX_PIXELS = 64


def pointwise_takes_torch(kernel_size: Sequence[int], stride: Sequence[int], padding, groups: int, pixels: int,
                          isa: str) -> bool:
    """Whether a conv of this geometry on ``pixels`` output pixels (batch x out_h x out_w) whose float32 weight
    is kept runs torch's conv at kernel level ``isa`` (POINTWISE_TORCH_LEVELS, POINTWISE_TORCH_MAX_PIXELS): 1x1,
    stride 1, zero padding given as numbers, one group (grouped 1x1 convs: not measured)."""
    return (isa in POINTWISE_TORCH_LEVELS and pixels <= POINTWISE_TORCH_MAX_PIXELS and groups == 1
            and tuple(kernel_size) == (1, 1) and tuple(stride) == (1, 1) and not isinstance(padding, str)
            and tuple(padding) == (0, 0))


def wide_any_outputs(out_channels_per_group: int, isa: str) -> bool:
    """Whether a conv of this many output channels per group runs the direct kernel at any output
    count at kernel level ``isa`` (WIDE_ANY_OUTPUTS_ON_THIS_CPU, WIDE_OUT_CHANNELS, WIDE_LEVELS)."""
    return WIDE_ANY_OUTPUTS_ON_THIS_CPU and isa in WIDE_LEVELS and out_channels_per_group >= WIDE_OUT_CHANNELS


def short_k_fits(k: int, out_pixels: int) -> bool:
    """Whether a conv of reduction ``k`` (in/groups x kh x kw) with ``out_pixels`` output pixels per image
    passes the direct kernel's rule for short reductions (MIN_K, SHORT_K, SHORT_K_MAX_PIXELS); the fp16
    route asks it too."""
    return k >= SHORT_K or (k >= MIN_K and out_pixels <= SHORT_K_MAX_PIXELS)


def int8_conv_arrays(packed: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                     bias: Optional[torch.Tensor], out_channels: int) -> tuple:
    """``(packed, scale, zero_point, bias)`` as the C functions take them (NumPy views or float32 /
    int32 copies, one scale and zero-point per output channel: a per-tensor pair repeated; bias None
    or float32): a packed int8 conv weight (``weight_packed`` of ``[out_channels, in/groups, kh, kw]``,
    K in (kh, kw, in) order) and its qparams."""
    scale = scale.detach().to(torch.float32).reshape(-1)
    zero_point = zero_point.detach().to(torch.int32).reshape(-1)
    if scale.numel() == 1 and out_channels != 1:  # per tensor
        scale, zero_point = scale.expand(out_channels), zero_point.expand(out_channels)
    return (packed.numpy(), scale.contiguous().numpy(), zero_point.contiguous().numpy(),
            None if bias is None else bias.detach().numpy())


def int8_conv_panels(arrays: tuple, out_channels: int, in_per_group: int, kernel_size: Sequence[int],
                     groups: int) -> tuple:
    """``(panels, biases)`` (NumPy float32) of the weight of :func:`int8_conv_arrays` for
    :func:`direct_conv2d`: each weight ``(q - zero_point) * scale`` in float32 (torch's
    dequantize), the bias in lanes beside them."""
    return _C.dconv_panels_int8(*arrays, out_channels, in_per_group, tuple(kernel_size), groups,
                                nthreads=SETTINGS.num_threads())


def float_conv_panels(weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int) -> tuple:
    """``(panels, biases)`` (NumPy float32) of a float32, float16 or bfloat16 CPU weight ``[out, in/groups,
    kh, kw]`` (widened exactly) and a float32 bias or None, for :func:`direct_conv2d` with
    ``tap_major=False``."""
    w = weight.detach().contiguous()
    bf16 = w.dtype == torch.bfloat16
    return _C.dconv_panels((w.view(torch.int16) if bf16 else w).numpy(), bf16,
                           None if bias is None else bias.detach().numpy(), groups, nthreads=SETTINGS.num_threads())


def direct_conv2d(x: torch.Tensor, panels, biases, out_channels: int, kernel_size: Sequence[int],
                  stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int,
                  tap_major: bool = True, bias=None) -> torch.Tensor:
    """float32 NCHW conv of a float32 CPU ``x`` (zero padding) with the weight and bias of the panels
    of :func:`int8_conv_panels` (``tap_major``) or :func:`float_conv_panels` (not); ``bias`` (a float32
    NumPy view of the layer's bias, see :func:`live_bias`) is read in place of the panels' copy.
    Twin: :func:`direct_conv2d_reference`."""
    return torch.from_numpy(_C.dconv2d((x.detach() if x.requires_grad else x).numpy(), panels, biases,
                                       out_channels, tuple(kernel_size), tuple(stride), tuple(padding),
                                       tuple(dilation), groups, nthreads=SETTINGS.num_threads(),
                                       tap_major=tap_major, bias=bias))


def live_bias(bias: Optional[torch.Tensor]):
    """A NumPy view of a float32 CPU ``bias`` for :func:`direct_conv2d` (kept beside the panels: a write
    through ``bias.data`` moves neither its version nor its address, so no stamp sees it, and the panels'
    copy went stale), or None (no bias, or one the panels hold as a converted copy)."""
    if bias is None or bias.dtype != torch.float32 or not bias.is_cpu or not bias.is_contiguous():
        return None
    return bias.detach().numpy()


def direct_conv2d_int8(x: torch.Tensor, arrays: tuple, out_channels: int, kernel_size: Sequence[int],
                       stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                       groups: int) -> torch.Tensor:
    """:func:`direct_conv2d` with the panels of :func:`int8_conv_arrays`' weight filled for this
    call alone (a weight whose panels are not kept): the same bits, one C call."""
    return torch.from_numpy(_C.dconv2d_int8((x.detach() if x.requires_grad else x).numpy(), *arrays, out_channels,
                                            tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation),
                                            groups, nthreads=SETTINGS.num_threads()))


def direct_conv2d_int4(x: torch.Tensor, arrays: tuple, out_channels: int, kernel_size: Sequence[int],
                       stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                       groups: int) -> torch.Tensor:
    """:func:`direct_conv2d` (``tap_major=False``) of an int4 weight, ``arrays`` its ``(codes, fp16 scales,
    u4.4 zero-points, float32 bias or None, group)``: the panels filled for this call from the floats of
    its dequantized weight, in the same C call (the bits of :func:`float_conv_panels` on that weight)."""
    packed, scale, zero, bias, group = arrays
    return torch.from_numpy(_C.dconv2d_int4((x.detach() if x.requires_grad else x).numpy(), packed, scale, zero,
                                            bias, group, tuple(kernel_size), tuple(stride), tuple(padding),
                                            tuple(dilation), groups, nthreads=SETTINGS.num_threads()))


def direct_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride,
                            padding, dilation, groups: int) -> torch.Tensor:
    """The pure-torch twin: torch's conv on the dequantized (or widened) float32 weight."""
    return F.conv2d(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups)


# -- the torch.library ops (graph capture and autograd: the eager route's kernels, so the same bits) ----------

_LIB = torch.library.Library("mono_quant", "FRAGMENT")
_LIB.define("direct_conv2d_int8(Tensor x, Tensor packed, Tensor info, Tensor scale, Tensor zero_point, Tensor? bias, "
            "int[] kernel_size, int[] stride, int[] padding, int[] dilation, int groups, int out_channels) -> Tensor")
_LIB.define("direct_conv2d(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, "
            "int groups) -> Tensor")


def conv_out_shape(x, out_channels, kernel, stride, padding, dilation) -> tuple:
    """(batch, out_channels, out_h, out_w) of a conv of ``x`` (zero padding given as numbers)."""
    return (x.shape[0], out_channels, *conv_out_sizes(x.shape[2:], kernel, stride, padding, dilation))


def _direct_conv2d_int8(x, packed, info, scale, zero_point, bias, kernel_size, stride, padding, dilation, groups,
                        out_channels):
    arrays = int8_conv_arrays(packed, scale, zero_point, None if bias is None else bias.float(), out_channels)
    return direct_conv2d_int8(x, arrays, out_channels, kernel_size, stride, padding, dilation, groups)


def _direct_conv2d_int8_fake(x, packed, info, scale, zero_point, bias, kernel_size, stride, padding, dilation,
                             groups, out_channels):
    return x.new_empty(conv_out_shape(x, out_channels, kernel_size, stride, padding, dilation), dtype=torch.float32)


def _direct_conv2d(x, weight, bias, stride, padding, dilation, groups):
    panels = float_conv_panels(weight, None if bias is None else bias.float(), groups)
    return direct_conv2d(x, *panels, weight.shape[0], weight.shape[2:], stride, padding, dilation, groups,
                         tap_major=False)


def _direct_conv2d_fake(x, weight, bias, stride, padding, dilation, groups):
    return x.new_empty(conv_out_shape(x, weight.shape[0], weight.shape[2:], stride, padding, dilation),
                       dtype=torch.float32)


_LIB.impl("direct_conv2d_int8", _direct_conv2d_int8, "CPU")
torch.library.register_fake("mono_quant::direct_conv2d_int8", _direct_conv2d_int8_fake, lib=_LIB)
_LIB.impl("direct_conv2d", _direct_conv2d, "CPU")
torch.library.register_fake("mono_quant::direct_conv2d", _direct_conv2d_fake, lib=_LIB)


def _int8_setup(ctx, inputs, output):
    x, packed, info, scale, zero_point, bias, kernel_size, stride, padding, dilation, groups, out_channels = inputs
    ctx.save_for_backward(packed, info, scale, zero_point)
    ctx.meta = (x.dtype, tuple(x.shape), tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), groups,
                out_channels, bias is not None)


def _int8_backward(ctx, grad):
    from .torch_library import packed_conv_grads  # (the packed conv op's: one home for a conv weight's unpacking)
    grad_x, grad_bias = packed_conv_grads(ctx, grad, 5)
    return (grad_x, None, None, None, None, grad_bias) + (None,) * 6


torch.library.register_autograd("mono_quant::direct_conv2d_int8", _int8_backward, setup_context=_int8_setup,
                                lib=_LIB)
# (the same arguments as mono_quant::half_conv2d: its backward, the input's and the bias's gradients)
torch.library.register_autograd("mono_quant::direct_conv2d", _half_conv2d_backward, setup_context=_half_conv2d_setup,
                                lib=_LIB)
