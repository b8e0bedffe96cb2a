"""The fp16 / bf16 weight direct Conv2d (csrc/h16_dconv.c, ``_C.h16_conv2d(..., direct=True)``):
every kernel level against the exact (float64) conv on odd shapes, and bit for bit against the
scalar twin (csrc/ref_h16_dconv.c) at every level and thread count: each output is one fmaf
chain over its taps from the bias, in tap order, whatever the ISA, the output-channel block
(64 lanes at most, tails of 1-63), the pixel strip (96) or the tap chunk (128) it falls in.
The float32-rounding bound is test_half_conv.py's (the same contract as the im2col route)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mono_quant import _C
from mono_quant.kernels.half_conv import conv_algorithm, half_conv2d_arrays, half_conv2d_raw
from conftest import SUPPORTED, at_isa
from test_half_conv import CASES, HALF, IDS, check, geometry, rand_case

# (batch, in, out, kernel, stride, padding, dilation, groups, height, width): past one block of
# 64 output channels and its tails, past one strip of 96 pixels and one chunk of 128 taps
DIRECT_CASES = CASES + [
    (1, 64, 80, (3, 3), (1, 1), (1, 1), (1, 1), 1, 9, 11),     # 80 = 64 + a 16-lane tail; k = 576: 5 chunks
    (3, 20, 130, (3, 3), (2, 2), (1, 1), (1, 1), 1, 13, 10),   # 130 = 2 x 64 + 2; batch 3; stride 2
    (1, 16, 33, (5, 5), (1, 1), (2, 2), (1, 1), 1, 17, 15),    # 33 channels: 48 lanes; 255 pixels: 3 strips
    (2, 12, 48, (3, 3), (1, 1), (3, 1), (3, 1), 2, 8, 9),      # groups of 24 channels; dilation 3 x 1
    (1, 1, 16, (1, 1), (1, 1), (0, 0), (1, 1), 1, 1, 1),       # one input channel, one pixel, k = 1
    (1, 3, 64, (7, 7), (2, 2), (3, 3), (1, 1), 1, 23, 23),     # a ResNet stem, k = 147
]
DIRECT_IDS = IDS + ["64x80x9x11-k576", "3x20x130-s2", "16x33-5x5-255px", "g2-dil3x1", "1px-k1", "stem7x7"]


def direct(x, w, b, case, nthreads=1):
    arrays = half_conv2d_arrays(w, b)
    args = (x.numpy(), *arrays, *geometry(case))
    return torch.from_numpy(_C.h16_conv2d(*args, nthreads=nthreads, direct=True))


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", DIRECT_CASES, ids=DIRECT_IDS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_every_level_matches_the_exact_conv(isa, dtype, case, with_bias):
    x, w, b = rand_case(case, dtype, bias=with_bias)
    check(direct(x, w, b, case), x, w, b, case)


@pytest.mark.skipif("avx2" not in SUPPORTED, reason="needs an AVX2 CPU")
@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", DIRECT_CASES, ids=DIRECT_IDS)
def test_every_level_and_thread_count_gives_the_scalar_twins_bits(dtype, case):
    x, w, b = rand_case(case, dtype, seed=1)
    with at_isa("scalar"):
        want = direct(x, w, b, case)
    for level in SUPPORTED:
        with at_isa(level):
            for nthreads in (1, 2, 3):
                assert torch.equal(direct(x, w, b, case, nthreads), want), (level, nthreads)


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_non_contiguous_inputs_give_the_contiguous_bits(isa, dtype):
    case = DIRECT_CASES[len(CASES) + 1]
    x, w, b = rand_case(case, dtype)
    want = direct(x, w, b, case)
    wide = torch.randn(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3])
    wide[..., ::2] = x
    for view in (wide[..., ::2], x.contiguous(memory_format=torch.channels_last)):
        assert torch.equal(direct(view, w, b, case), want)
    big = torch.zeros(w.shape[0] * 2, *w.shape[1:], dtype=dtype)
    big[::2] = w
    assert torch.equal(direct(x, big[::2], b, case), want)


def test_the_automatic_choice_is_conv_algorithms(isa, monkeypatch):
    from mono_quant.kernels import half_conv as half_conv_kernels
    monkeypatch.setattr(half_conv_kernels, "WINOGRAD_ON_THIS_CPU", True)  # (Winograd's choice too, on any CPU)
    """half_conv2d_raw without ``algorithm`` takes kernels.half_conv.conv_algorithm's at the
    active level (Winograd at WINOGRAD_LEVELS only, the direct conv elsewhere)."""
    from mono_quant.kernels.half_conv import WINOGRAD_LEVELS
    one = ((1, 1), (1, 1), (1, 1), 1)
    wino = "winograd" if isa in WINOGRAD_LEVELS else "direct"
    for x_shape, w_shape, want in (((1, 64, 9, 11), (80, 64, 3, 3), "direct"),
                                   ((1, 512, 4, 4), (512, 512, 3, 3), "gemm"),  # few pixels x 2.4M weights
                                   ((1, 64, 32, 32), (128, 64, 3, 3), wino)):   # 75.5M multiply-adds
        x, w = torch.randn(x_shape), (torch.randn(w_shape) * 0.05).half()
        arrays = half_conv2d_arrays(w, None)
        assert conv_algorithm(x.shape, w.shape, *one) == conv_algorithm(x.shape, w.shape, *one, isa) == want
        assert torch.equal(half_conv2d_raw(x, *arrays, *one), half_conv2d_raw(x, *arrays, *one, algorithm=want))


def test_inf_and_nan_follow_the_exact_conv(isa):
    case = DIRECT_CASES[len(CASES)]
    x, w, b = rand_case(case, torch.float16)
    w[0, 0, 1, 1] = float("inf")
    w[70, 5, 0, 2] = float("-inf")
    x[0, 3, 4, 4] = float("nan")
    y = direct(x, w, b, case)
    ref = F.conv2d(x.double(), w.double(), b.double(), *geometry(case))
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    assert torch.equal(y[torch.isinf(ref)], ref[torch.isinf(ref)].float())


def test_no_input_channels_give_the_bias(isa):
    x = np.zeros((2, 0, 5, 5), np.float32)
    w = np.zeros((20, 0, 3, 3), np.float16)
    bias = np.arange(20, dtype=np.float32)
    y = _C.h16_conv2d(x, w, False, bias, (1, 1), (1, 1), (1, 1), 1, direct=True)
    assert y.shape == (2, 20, 5, 5)
    assert np.array_equal(y, np.broadcast_to(bias[None, :, None, None], y.shape))


def test_inputs_are_not_modified(isa):
    case = DIRECT_CASES[len(CASES) + 1]
    x, w, b = rand_case(case, torch.bfloat16)
    copies = [t.clone() for t in (x, w, b)]
    direct(x, w, b, case, nthreads=2)
    assert all(torch.equal(a, c) for a, c in zip((x, w, b), copies))


def test_a_padded_copy_past_memory_raises_a_memory_error_that_says_so():
    """The direct kernel copies the zero-padded image first (2^63 bytes here: every allocator
    refuses it): a MemoryError naming the conv and that copy's size, not a bare one."""
    x = np.zeros((1, 1 << 19, 1, 1), np.float32)
    w = np.zeros((1, 1 << 19, 1, 1), np.float16)
    big = (1 << 20, 1 << 20)
    with pytest.raises(MemoryError, match=r"direct conv of x \[1, 524288, 1, 1\] with padding \(1048576, 1048576\)"
                                          r".*zero-padded image alone: \d+ MB"):
        _C.h16_conv2d(x, w, False, None, big, big, (1, 1), 1, direct=True)


def test_direct_and_winograd_together_are_refused():
    x, w = np.zeros((1, 8, 5, 5), np.float32), np.zeros((8, 8, 3, 3), np.float16)
    with pytest.raises(ValueError, match="direct=True and winograd=True"):
        _C.h16_conv2d(x, w, False, None, (1, 1), (1, 1), (1, 1), 1, direct=True, winograd=True)
