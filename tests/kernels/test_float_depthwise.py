"""csrc/float_depthwise.c: the float32 depthwise Conv2d (eight output channels in the lanes).  Every
level (the scalar reference, AVX2's twin) and thread count gives the same bits, torch's conv up to
float32 rounding, on odd shapes: planes of one pixel, one row or one column, fewer than eight pixels
and a tail past a multiple of eight, channels past a multiple of eight, channel multipliers, strides,
dilations, padding past the kernel, all-zero and extreme planes, NaN / Inf, non-contiguous inputs;
bad arguments are clear errors."""
import itertools

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import pytest
import torch
import torch.nn.functional as F

from mono_quant import _C

from conftest import SUPPORTED, at_isa


def _conv(x, w, b, stride, padding, dilation, nthreads=1):
    return torch.from_numpy(_C.depthwise_conv2d(x.numpy(), w.numpy(), None if b is None else b.numpy(), stride,
                                                padding, dilation, nthreads=nthreads))


def _every_level(x, w, b, stride, padding, dilation):
    """The result at each supported level and both thread counts, checked equal; one of them."""
    results = []
    for level in SUPPORTED:
        with at_isa(level):
            results += [_conv(x, w, b, stride, padding, dilation, nthreads) for nthreads in (1, 2)]
    for other in results[1:]:
        assert torch.equal(results[0].view(torch.int32), other.view(torch.int32))
    return results[0]


CASES = [  # (batch, channels, mult, (h, w), kernel, stride, padding, dilation)
    (1, 8, 1, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1)),
    (2, 17, 1, (9, 13), (3, 3), (2, 2), (1, 1), (1, 1)),
    (1, 3, 2, (7, 7), (5, 5), (1, 1), (2, 2), (1, 1)),
    (1, 9, 3, (5, 6), (3, 3), (1, 2), (0, 1), (1, 1)),
    (3, 16, 1, (1, 1), (3, 3), (1, 1), (1, 1), (1, 1)),       # one pixel
    (1, 8, 1, (1, 40), (1, 3), (1, 1), (0, 1), (1, 1)),       # one row
    (1, 8, 1, (33, 1), (3, 1), (1, 1), (1, 0), (1, 1)),       # one column
    (1, 24, 1, (14, 14), (7, 7), (1, 1), (3, 3), (1, 1)),
    (2, 12, 1, (11, 10), (3, 3), (3, 2), (4, 3), (2, 1)),     # padding past the kernel, dilation
    (1, 1, 1, (6, 6), (2, 3), (1, 1), (0, 0), (2, 2)),        # one channel: seven empty lanes
    (1, 8, 1, (3, 3), (3, 3), (1, 1), (0, 0), (1, 1)),        # one output pixel
    (1, 32, 1, (16, 16), (3, 3), (2, 2), (1, 1), (1, 1)),     # 64 output pixels: whole tiles
    (1, 8, 1, (10, 9), (3, 3), (1, 1), (1, 1), (1, 1)),       # 90: a tail past the tiles
]


@pytest.mark.parametrize("batch, channels, mult, size, kernel, stride, padding, dilation", CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_every_level_and_thread_count_gives_the_same_bits_near_torchs(batch, channels, mult, size, kernel, stride,
                                                                      padding, dilation, with_bias):
    torch.manual_seed(channels * 7 + mult)
    x = torch.randn(batch, channels, *size)
    w = torch.randn(channels * mult, 1, *kernel)
    b = torch.randn(channels * mult) if with_bias else None
    y = _every_level(x, w, b, stride, padding, dilation)
    expected = F.conv2d(x, w, b, stride, padding, dilation, channels)
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 3), st.integers(1, 20), st.integers(1, 3), st.integers(1, 12), st.integers(1, 12),
       st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3), st.integers(0, 3), st.integers(0, 3),
       st.integers(1, 2), st.integers(1, 2), st.booleans(), st.booleans(), st.integers(0, 2**31 - 1))
def test_property_any_geometry_matches_torch_at_every_level(batch, channels, mult, h, w, kh, kw, sh, sw, ph, pw, dh,
                                                            dw, with_bias, strided, seed):
    if h + 2 * ph < dh * (kh - 1) + 1 or w + 2 * pw < dw * (kw - 1) + 1:
        return  # no output: the argument check's case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels * (2 if strided else 1), h, w, generator=gen)
    if strided:
        x = x[:, ::2]  # a non-contiguous input
    weight = torch.randn(channels * mult, 1, kh, kw, generator=gen)
    b = torch.randn(channels * mult, generator=gen) if with_bias else None
    y = _every_level(x, weight, b, (sh, sw), (ph, pw), (dh, dw))
    torch.testing.assert_close(y, F.conv2d(x, weight, b, (sh, sw), (ph, pw), (dh, dw), channels), atol=1e-5,
                               rtol=1e-5)


def test_the_bits_are_an_fma_chain_in_tap_order_from_the_bias():
    """The contract every level keeps (mq.h): out = fma(w[t], x, ...) over the taps in (i, j) order."""
    torch.manual_seed(0)
    x, w, b = torch.randn(1, 8, 5, 5), torch.randn(8, 1, 3, 3), torch.randn(8)
    xp = F.pad(x, (1, 1, 1, 1)).double()
    expected = torch.empty(1, 8, 5, 5)
    for c, r, q in itertools.product(range(8), range(5), range(5)):
        acc = np.float32(b[c])
        for i, j in itertools.product(range(3), range(3)):
            # an fmaf: the product and sum rounded once (exact in float64 for float32 inputs, then rounded)
            acc = np.float32(float(w[c, 0, i, j]) * float(xp[0, c, r + i, q + j]) + float(acc))
        expected[0, c, r, q] = float(acc)
    y = _every_level(x, w, b, (1, 1), (1, 1), (1, 1))
    assert torch.equal(y, expected)


def test_zero_planes_extremes_and_nonfinite_values():
    """(Where products overflow, inf - inf depends on the summation order, torch's and ours differ: the
    extreme plane stays finite; one NaN or Inf input reaches each output once, order-free.)"""
    x = torch.randn(1, 16, 6, 6)
    x[0, 0] = 0.0
    x[0, 1] = 1e30
    x[0, 2, 2, 2] = float("nan")
    x[0, 3, 0, 0] = float("inf")
    w = torch.randn(16, 1, 3, 3)
    w[4] = 0.0
    w[3] = w[3].abs() + 0.1  # (inf times a weight of either sign: +-inf, never 0 * inf)
    y = _every_level(x, w, None, (1, 1), (1, 1), (1, 1))
    expected = F.conv2d(x, w, None, 1, 1, 1, 16)
    assert torch.equal(torch.isnan(y), torch.isnan(expected))
    assert torch.equal(torch.isinf(y), torch.isinf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(y[finite], expected[finite], atol=1e-4, rtol=1e-5)
    assert torch.all(y[0, 0] == 0)  # a zero plane, no bias
    assert torch.all(y[0, 4] == 0)  # a zero weight


def test_a_non_contiguous_input_is_read_as_its_values():
    torch.manual_seed(1)
    base = torch.randn(2, 16, 12, 20)
    x = base[:, ::2, :, ::2]  # strided in channels and columns
    w, b = torch.randn(8, 1, 3, 3), torch.randn(8)
    y = torch.from_numpy(_C.depthwise_conv2d(x.numpy(), w.numpy(), b.numpy(), (1, 1), (1, 1), (1, 1)))
    assert torch.equal(y, _conv(x.contiguous(), w, b, (1, 1), (1, 1), (1, 1)))


def test_an_empty_batch_gives_an_empty_result():
    y = _conv(torch.randn(0, 8, 5, 5), torch.randn(8, 1, 3, 3), None, (1, 1), (1, 1), (1, 1))
    assert y.shape == (0, 8, 5, 5)


@pytest.mark.parametrize("x_shape, w_shape, b_len, message", [
    ((1, 8, 5, 5), (8, 2, 3, 3), None, r"w must be \[out_channels, 1, kh, kw\]"),
    ((1, 8, 5, 5), (12, 1, 3, 3), None, "groups=8 must divide"),
    ((1, 8, 5, 5), (8, 1, 3, 3), 5, "bias has 5"),
    ((1, 8, 2, 2), (8, 1, 5, 5), None, "smaller than the dilated kernel"),
    ((1, 0, 5, 5), (8, 1, 3, 3), None, "channels"),
    ((8, 5, 5), (8, 1, 3, 3), None, "x"),
])
def test_bad_arguments_are_clear_errors(x_shape, w_shape, b_len, message):
    x, w = np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32)
    b = None if b_len is None else np.zeros(b_len, np.float32)
    with pytest.raises((ValueError, TypeError), match=message):
        _C.depthwise_conv2d(x, w, b, (1, 1), (0, 0), (1, 1))


def test_wrong_dtypes_and_geometry_are_refused():
    x, w = np.zeros((1, 8, 5, 5), np.float32), np.zeros((8, 1, 3, 3), np.float32)
    with pytest.raises(TypeError, match="float32"):
        _C.depthwise_conv2d(x.astype(np.float64), w, None, (1, 1), (0, 0), (1, 1))
    with pytest.raises(TypeError, match="float32"):
        _C.depthwise_conv2d(x, w.astype(np.float16), None, (1, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="stride"):
        _C.depthwise_conv2d(x, w, None, (0, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="padding"):
        _C.depthwise_conv2d(x, w, None, (1, 1), (-1, 0), (1, 1))
    with pytest.raises(ValueError, match="nthreads"):
        _C.depthwise_conv2d(x, w, None, (1, 1), (0, 0), (1, 1), nthreads=0)


def test_more_channels_than_a_conv_takes_says_so():
    x = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (1, (1 << 20) + 1, 1, 1), (0, 0, 0, 0))
    w = np.zeros(((1 << 20) + 1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="1048577 channels, more than the 1048576 a conv takes"):
        _C.depthwise_conv2d(x, w, None, (1, 1), (0, 0), (1, 1))
