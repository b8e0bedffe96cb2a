"""Wrapper over the C fp16 / bf16 weight Conv2d (csrc/h16_conv.c), and the same kernel as the
``torch.library`` op ``mono_quant::half_conv2d`` (fake implementation and backward to the input
and bias), for ``torch.compile``, ``torch.export`` and autograd.

Three algorithms, the same contract: im2col rows in fp32 times the 16-bit weight as stored,
widened to fp32 in registers (h16_conv.c: streams the weight once, for few output pixels and
large weights), the direct conv (h16_dconv.c: no im2col, output channels in vector lanes, the
weight widened per call into a tap-major panel), or for large 3x3 stride-1 convs Winograd
F(2x2, 3x3) on the direct conv's kernel (h16_winograd.c: 2.25x fewer multiply-adds).
``conv_algorithm`` picks, on the shapes only, so eager calls and the op take the same one."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import _C
from .conv_shape import conv_out_sizes
from .fp16 import half_linear_arrays
from .settings import SETTINGS

__all__ = ["half_conv2d", "half_conv2d_arrays", "half_conv2d_raw", "half_conv2d_reference", "uses_direct",
           "uses_winograd", "conv_algorithm", "ALGORITHMS", "GEMM_ROWS_WEIGHT", "GEMM_LEVEL_ROWS_WEIGHT_K", "GEMM_MIN_K", "WINOGRAD_MIN_MACS",
           "WINOGRAD_MAX_TRAFFIC", "WINOGRAD_MIN_SIDE", "WINOGRAD_ONE_BLOCK_MIN_SIDE", "WINOGRAD_MIN_CHANNELS", "WINOGRAD_BLOCK", "WINOGRAD_LEVELS",
           "WINOGRAD_ON_THIS_CPU",
           "DIRECT_PAD_FACTOR", "DIRECT_PAD_FREE", "direct_pad_fits"]

#: the C kernels: im2col rows x the weight (h16_conv.c), the direct conv (h16_dconv.c), Winograd
#: F(2x2, 3x3) (h16_winograd.c)
ALGORITHMS = ("gemm", "direct", "winograd")
#: the im2col GEMM (h16_conv.c) runs a conv of at most ``rows`` rows (batch x output pixels)
#: and a weight of at least ``elements`` elements, for each pair: there the weight's bytes
#: dominate (the GEMM streams the 16-bit weight once, the others widen it first); anywhere else
#: the direct kernel is faster (benchmarks/bench_fp16_conv.py --crossover: e.g. 512->512 3x3 on
#: 4x4 0.36 vs 0.68 fp32 time, on 7x7 0.53 vs 0.64; 256->256 on 7x7 0.40 vs 0.37)
GEMM_ROWS_WEIGHT = ((16, 1 << 15), (100, 1 << 20))
#: ... and per kernel level, ``(rows, elements, reduction)`` triples on top: at most ``rows`` rows, a
#: weight of at least ``elements`` and a reduction of at least ``reduction``.  The AVX2 level (AMD Zen 3,
#: 6 Dec 2026, 1 thread, time / fp32, GEMM against torch's conv on the weight widened per call, which such
#: a weight took, or the direct kernel): at 49 rows 512 -> 1000 1x1 0.89 (1.12 / 1.21), 1024 -> 512 0.87
#: (1.11 / 1.20), 320 -> 1280 1.02 (1.12 / 1.19), 960 -> 160 1.07 (1.24 / 1.17), 256 -> 512 1.00 (1.21 /
#: 0.97); a shorter reduction ties or loses (160 -> 960 1.23 against 1.21), so do 64 rows (128 -> 1024 1.66,
#: 256 -> 512 1.33 against 1.21: the GEMM's 4-row tiles widen the weight once each)
GEMM_LEVEL_ROWS_WEIGHT_K = {"avx2": ((56, 1 << 17, 256),)}
#: the GEMM's dot products need a long reduction (in/groups x kh x kw)
GEMM_MIN_K = 144
#: Winograd (a 3x3 stride-1 conv, no dilation, no groups) from this many multiply-adds of the
#: direct conv on: below, its per-call transforms (the weight's above all) cost more than the
#: 2.25x fewer multiply-adds save
WINOGRAD_MIN_MACS = 1 << 25
#: ... and up to this many in_channels x tiles (2x2 outputs) of one image x blocks of
#: WINOGRAD_BLOCK output channels: the transformed image (16 floats a channel and tile) is read
#: once per block, and past this it leaves the caches (h16_winograd.c takes a batch in passes of
#: as many images as fit; ResNet-18's 3x3 convs have 50176 an image)
WINOGRAD_MAX_TRAFFIC = 1 << 16
#: ... on images of at least this many output rows and columns (its transforms go row by row
#: of each image and channel: on small images their per-row costs dominate; 64->64 on 8x8 at
#: batch 64 took 2.1x fp32 time)
WINOGRAD_MIN_SIDE = 14
#: ... and, for a conv of at most WINOGRAD_BLOCK output channels (one block: each tile's transform of the
#: image serves one GEMM), at least this many output rows and columns.  AMD Zen 5 (2 Dec 2026, 2 threads,
#: time / fp32, Winograd against the direct kernel): 64->64 on 14x14 / 16x16 / 24x24 / 32x32 at batch 8-64
#: 1.16 / 1.01-1.69 / 0.99 / 0.97-0.99 against 0.85 / 0.78-1.09 / 0.86 / 0.86-0.92, 128->64 on 16x16
#: 1.03 against 0.92; from 40x40 Winograd leads (0.94 / 0.86 / 0.58-0.90 on 40 / 48 / 56 against
#: 1.09 / 0.97 / 0.91-1.00).  Two blocks or more lead from WINOGRAD_MIN_SIDE (64->128 on 16x16 0.73-0.90
#: against 0.80-1.01, 128->128 0.62-0.97 against 0.74-0.79, 256->256 on 14x14 0.71-0.91 against
#: 0.85-0.96).  The same at every thread count (the two differ in their bits)
WINOGRAD_ONE_BLOCK_MIN_SIDE = 36
#: ... and at least this many input channels (the reduction of each of its 16 GEMMs: with 32,
#: 32->32 on 16x16 at batch 64 took 1.7x fp32 time, the direct kernel 1.1x)
WINOGRAD_MIN_CHANNELS = 64
#: output channels per block of h16_winograd.c (its BLOCK)
WINOGRAD_BLOCK = 64
#: the kernel levels where a conv that fits Winograd runs it (AVX-512: ResNet-18's 3x3 convs at
#: batch 1 and 8 in 0.63-0.78x fp32 time; the AVX2 level measured 0.98-1.27x against torch's
#: AVX-512 conv on the same host, so not there: the direct kernel instead)
WINOGRAD_LEVELS = ("avx512",)
#: ... on CPUs where it was measured to pay: not Intel's, whose torch conv (oneDNN's Intel kernels) it did
#: not beat (Xeon with AMX, 1 December 2026, 1-2 threads: 0.94-1.62x fp32's time on 64->64 16x16 at batch 8
#: and 64, 32->32 32x32 at batch 64, 128->128 8x8 at batch 64, 64->64 56x56 at batch 1); those convs keep
#: the rules without it (torch's conv past MAX_OUTPUTS)
WINOGRAD_ON_THIS_CPU = _C.cpu_info().get("vendor") != "GenuineIntel"
#: the direct kernel copies the whole zero-padded image (batch x channels x (h + 2 ph) x
#: (w + 2 pw) floats, h16_dconv.c) first: it runs a conv only while that copy is at most this
#: many times the input and output together ...
DIRECT_PAD_FACTOR = 4
#: ... or at most this many floats (4 MB: a small image with padding 1 is several times its
#: size and costs nothing); past both (a padding far larger than the image, as Conv2d(32, 16, 1,
#: stride=20000, padding=20000) on 1x1: a 200 GB copy for 3x3 outputs) the im2col GEMM, which
#: reads the image through bounds checks, runs it
DIRECT_PAD_FREE = 1 << 20


def uses_direct(rows: int, weight_numel: int, k: int, isa: Optional[str] = None) -> bool:
    """Whether a conv of ``rows`` (batch x output pixels), a weight of ``weight_numel``
    elements and a reduction of ``k`` runs the direct kernel (or Winograd) rather than the
    im2col GEMM at kernel level ``isa`` (None: the active one)."""
    if k < GEMM_MIN_K:
        return True
    if any(rows <= r and weight_numel >= e for r, e in GEMM_ROWS_WEIGHT):
        return False
    extra = GEMM_LEVEL_ROWS_WEIGHT_K.get(SETTINGS.isa if isa is None else isa, ())
    return not any(rows <= r and weight_numel >= e and k >= least for r, e, least in extra)


def uses_winograd(batch: int, in_channels: int, out_channels: int, out_h: int, out_w: int, kernel, stride,
                  dilation, groups: int) -> bool:
    """Whether a conv of this geometry fits Winograd F(2x2, 3x3) and pays (the constants above)."""
    if tuple(kernel) != (3, 3) or tuple(stride) != (1, 1) or tuple(dilation) != (1, 1) or groups != 1:
        return False
    if out_h < WINOGRAD_MIN_SIDE or out_w < WINOGRAD_MIN_SIDE or in_channels < WINOGRAD_MIN_CHANNELS:
        return False
    if out_channels <= WINOGRAD_BLOCK and min(out_h, out_w) < WINOGRAD_ONE_BLOCK_MIN_SIDE:
        return False
    image_tiles = ((out_h + 1) // 2) * ((out_w + 1) // 2)
    blocks = -(-out_channels // WINOGRAD_BLOCK)
    macs = batch * out_h * out_w * in_channels * 9 * out_channels
    return macs >= WINOGRAD_MIN_MACS and in_channels * image_tiles * blocks <= WINOGRAD_MAX_TRAFFIC


def direct_pad_fits(x_shape, out_numel: int, padding) -> bool:
    """Whether the direct kernel's copy of the zero-padded image is small enough
    (``DIRECT_PAD_FACTOR``, ``DIRECT_PAD_FREE``) for a conv of input ``x_shape`` and
    ``out_numel`` output elements."""
    if not any(padding):
        return True  # no copy
    batch, channels, height, width = x_shape
    copy = batch * channels * (height + 2 * padding[0]) * (width + 2 * padding[1])
    return copy <= DIRECT_PAD_FREE or copy <= DIRECT_PAD_FACTOR * (batch * channels * height * width + out_numel)


def conv_algorithm(x_shape, weight_shape, stride, padding, dilation, groups: int, isa: Optional[str] = None) -> str:
    """Which of ``ALGORITHMS`` a conv of these shapes runs at kernel level ``isa`` (None: the
    active one): the GEMM for few output pixels times a large weight (:func:`uses_direct`),
    else Winograd where it fits and pays (:func:`uses_winograd`) at the ``WINOGRAD_LEVELS``,
    else the direct conv, unless its padded copy of the image would be too large
    (:func:`direct_pad_fits`: the GEMM then).  The GEMM and the direct conv give torch's conv to
    float32 rounding; Winograd's error scales with the weights' and inputs' magnitudes across each
    3x3 window (its 4x4 tile), not each output's sum |w x| (the bound: tests/kernels/
    test_half_winograd.py); the direct conv and Winograd give the same bits at every kernel
    level and thread count."""
    n, cg, kh, kw = weight_shape
    out = conv_out_sizes(x_shape[2:], (kh, kw), stride, padding, dilation)
    if len(out) != 2 or out[0] <= 0 or out[1] <= 0:
        return "direct"  # (the C layer raises)
    if not uses_direct(x_shape[0] * out[0] * out[1], n * cg * kh * kw, cg * kh * kw, isa):
        return "gemm"
    if (uses_winograd(x_shape[0], cg * groups, n, out[0], out[1], (kh, kw), stride, dilation, groups)
            and (SETTINGS.isa if isa is None else isa) in WINOGRAD_LEVELS and WINOGRAD_ON_THIS_CPU):
        return "winograd"
    return "direct" if direct_pad_fits(x_shape, x_shape[0] * n * out[0] * out[1], padding) else "gemm"

# The op lives in the package's "mono_quant" namespace (kernels/torch_library.py defines it):
# a FRAGMENT library adds to it, kept alive as long as this module
_LIB = torch.library.Library("mono_quant", "FRAGMENT")


def half_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: Sequence[int],
                padding: Sequence[int], dilation: Sequence[int], groups: int) -> torch.Tensor:
    """float32 ``F.conv2d(x, weight.float(), bias, stride, padding, dilation, groups)`` on the
    CPU for a float32 NCHW ``x`` and a float16 / bfloat16 ``weight`` ``[out, in/groups, kh, kw]``
    (zero padding; non-contiguous inputs are copied by the C layer); the bias (any float dtype)
    is taken as float32.  Twin: :func:`half_conv2d_reference`.  Raises TypeError / ValueError
    (from the C layer) for other dtypes or shapes that do not fit."""
    return half_conv2d_raw(x, *half_conv2d_arrays(weight, bias), stride, padding, dilation, groups)


def half_conv2d_arrays(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> tuple:
    """``(weight array, is_bf16, float32 bias array or None)``: what :func:`half_conv2d_raw`
    takes for a layer (the Linear's arrays: the same views and bias)."""
    return half_linear_arrays(weight, bias, "half_conv2d")


def half_conv2d_raw(x: torch.Tensor, w, is_bf16: bool, bias, stride, padding, dilation, groups: int,
                    algorithm: Optional[str] = None) -> torch.Tensor:
    """:func:`half_conv2d` on the arrays of :func:`half_conv2d_arrays`; ``algorithm``: one of
    ``ALGORITHMS`` (None: :func:`conv_algorithm` on the shapes at the active kernel level)."""
    if algorithm is None:
        algorithm = "direct" if len(w.shape) != 4 else conv_algorithm(x.shape, w.shape, stride, padding, dilation,
                                                                      groups, SETTINGS.isa)
    y = _C.h16_conv2d((x.detach() if x.requires_grad else x).numpy(), w, is_bf16, bias, tuple(stride),
                      tuple(padding), tuple(dilation), groups, nthreads=SETTINGS.num_threads(),
                      direct=algorithm == "direct", winograd=algorithm == "winograd")
    return torch.from_numpy(y)


def half_conv2d_reference(x, weight, bias, stride, padding, dilation, groups) -> torch.Tensor:
    """The pure-torch twin of :func:`half_conv2d`: torch's conv on the weight widened to float32."""
    return F.conv2d(x.float(), weight.float(), None if bias is None else bias.float(), tuple(stride), tuple(padding),
                    tuple(dilation), groups)


# -- the torch.library op -------------------------------------------------------------------------------------

_LIB.define("half_conv2d(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, "
            "int groups) -> Tensor")


def _half_conv2d_fake(x, weight, bias, stride, padding, dilation, groups):
    out = conv_out_sizes(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    return x.new_empty((x.shape[0], weight.shape[0], *out), dtype=torch.float32)


_LIB.impl("half_conv2d", half_conv2d, "CPU")
torch.library.register_fake("mono_quant::half_conv2d", _half_conv2d_fake, lib=_LIB)


def _half_conv2d_setup(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(weight)
    ctx.meta = (x.dtype, tuple(x.shape), tuple(stride), tuple(padding), tuple(dilation), groups, bias is not None)


def _half_conv2d_backward(ctx, grad):
    (weight,) = ctx.saved_tensors
    x_dtype, x_shape, stride, padding, dilation, groups, has_bias = ctx.meta
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.nn.grad.conv2d_input(x_shape, weight.float(), grad, stride, padding, dilation,
                                            groups).to(x_dtype)
    if has_bias and ctx.needs_input_grad[2]:
        grad_bias = grad.sum((0, 2, 3))
    return grad_x, None, grad_bias, None, None, None, None


torch.library.register_autograd("mono_quant::half_conv2d", _half_conv2d_backward, setup_context=_half_conv2d_setup,
                                lib=_LIB)
