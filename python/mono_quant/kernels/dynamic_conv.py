"""The dynamic int8 conv's two C routes (``_C.conv2d_int8``): the direct conv kernel (one
parallel region per call, no im2col; csrc/conv_dynamic_direct.c) where it applies, else int8
im2col + GEMM (csrc/linear.c).  Both give the same bits; this module says which one a layer
takes, switches the direct one off for tests, and reads the per-step timings that
benchmarks/bench_dynamic_conv.py --profile prints."""
from __future__ import annotations

from typing import Optional, Sequence

from .. import _C

__all__ = ["DIRECT_ROUTE", "DIRECT_MAX_K", "DIRECT_EXTRA_PAD", "DIRECT_MAX_ARG", "direct_applies", "set_direct",
           "profile"]

#: the C switch's setting as :func:`set_direct` last left it: the layers' kept routes are stamped with it
DIRECT_ROUTE = True
#: the direct route's largest reduction (in_channels * kh * kw): its int32 sums stay exact
DIRECT_MAX_K = 32768
#: padding beyond (k - 1) * dilation the direct route still takes (csrc/conv_dynamic_direct.h)
DIRECT_EXTRA_PAD = 4
#: the largest kernel size, padding or dilation the C rule weighs (csrc/bind.h MQ_MAX_CONV_ARG, what
#: every conv binding accepts): a larger one is a plain False, never an int64 overflow in C
DIRECT_MAX_ARG = 2**20


def direct_applies(in_channels: int, groups: int, kernel_size: Sequence[int], padding: Sequence[int],
                   dilation: Sequence[int], has_zero_points: bool) -> bool:
    """Whether a dynamic conv of this layer takes the direct route (one group, no weight
    zero-points, padding at most DIRECT_EXTRA_PAD wider than a tap reaches ((k - 1) * dilation:
    the route copies the image padded), a reduction of at most DIRECT_MAX_K; any in_channels,
    those not a multiple of 4 (a first layer's 1 or 3) through small im2col blocks in C; every
    kernel level has the direct kernel).  That route needs no whole-batch im2col buffer, so a
    large batch goes to C in one call.  Plain Python, so that torch.compile traces the route
    rule: the twin of ``_C.conv2d_int8_direct_applies``, the rule C itself follows (tests hold
    them equal)."""
    (kh, kw), (ph, pw), (dh, dw) = kernel_size, padding, dilation
    return bool(DIRECT_ROUTE and groups == 1 and not has_zero_points and 0 < in_channels
                and 0 < kh <= DIRECT_MAX_ARG and 0 < kw <= DIRECT_MAX_ARG and 0 < dh <= DIRECT_MAX_ARG
                and 0 < dw <= DIRECT_MAX_ARG and ph <= DIRECT_MAX_ARG and pw <= DIRECT_MAX_ARG
                and in_channels * kh * kw <= DIRECT_MAX_K
                and 0 <= ph <= (kh - 1) * dh + DIRECT_EXTRA_PAD and 0 <= pw <= (kw - 1) * dw + DIRECT_EXTRA_PAD)


def set_direct(on: bool) -> bool:
    """Let the direct route run where it applies (True, the default) or keep every dynamic conv
    on the im2col route (False; tests compare the two); returns the previous setting.  The same
    bits for a given C call; but with it off, the module's size rule also sends convs of 2^15 to
    2^18 multiply-adds per image back to F.conv2d on the dequantized weight (other numbers)."""
    global DIRECT_ROUTE
    previous = _C.set_conv_direct(bool(on))
    DIRECT_ROUTE = bool(on)
    return previous


def profile(enable: Optional[bool] = None) -> dict:
    """The dynamic conv's step times (ns) and C calls since the last call, then zeroed;
    ``enable`` switches the timing on or off (off by default).  Keys: see ``_C.conv_profile``."""
    return _C.conv_profile(enable)
