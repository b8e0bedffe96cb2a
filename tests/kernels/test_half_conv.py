"""The fp16 / bf16 weight Conv2d (csrc/h16_conv.c, kernels/half_conv.py): every kernel level
against the exact (float64) conv on odd shapes (stride, padding, dilation, groups incl.
depthwise, 1x1, one channel, asymmetric kernels, batch > 1, rows past one im2col chunk),
non-contiguous inputs, threads, bad arguments, and the torch.library op (opcheck).

Tolerance: the kernel sums each output's k = in/groups*kh*kw products in float32 in its own
order (the GEMM's), torch's conv in another, so neither is the exact sum; both stay within
the classic recursive-summation bound (k + 2) * 2^-24 * sum(|x * w|) (+ |bias|) of the
exact float64 result, which is what the tests assert (the bf16 / fp16 weight widened to
float32 is exact, so the weight adds no error)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mono_quant import _C
from mono_quant.kernels.half_conv import half_conv2d, half_conv2d_reference
from conftest import SUPPORTED, at_isa

HALF = [torch.float16, torch.bfloat16]

# (batch, in, out, kernel, stride, padding, dilation, groups, height, width)
CASES = [
    (1, 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, 8, 8),
    (2, 3, 5, (3, 3), (2, 2), (1, 1), (1, 1), 1, 9, 7),        # odd sizes, stride 2, batch 2
    (1, 1, 1, (1, 1), (1, 1), (0, 0), (1, 1), 1, 1, 1),        # one channel, one pixel
    (1, 1, 3, (3, 3), (1, 1), (0, 0), (1, 1), 1, 5, 5),        # one input channel
    (3, 8, 12, (1, 1), (1, 1), (0, 0), (1, 1), 1, 4, 6),       # 1x1
    (1, 12, 8, (1, 1), (2, 2), (0, 0), (1, 1), 1, 7, 7),       # 1x1 stride 2 (a ResNet shortcut)
    (1, 6, 9, (3, 1), (1, 2), (2, 0), (1, 1), 3, 6, 5),        # asymmetric kernel, stride, padding; groups
    (2, 8, 8, (3, 3), (1, 1), (2, 2), (2, 2), 1, 7, 9),        # dilation 2
    (1, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 8, 6, 6),        # depthwise
    (1, 8, 16, (3, 3), (2, 1), (1, 3), (1, 2), 4, 5, 11),      # everything at once
    (2, 16, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, 24, 24),     # 1152 rows: past one im2col chunk
    (1, 64, 7, (3, 3), (1, 1), (1, 1), (1, 1), 1, 5, 5),       # k = 576, a GEMM column tail
    (1, 4, 4, (5, 5), (3, 3), (0, 0), (1, 1), 1, 5, 5),        # one output pixel
]
IDS = ["x".join(map(str, (c[0], c[1], c[2], *c[3], "s", *c[4], "p", *c[5], "d", *c[6], "g", c[7], c[8], c[9])))
       for c in CASES]


def rand_case(case, dtype, seed=0, bias=True):
    batch, cin, cout, kernel, _, _, _, groups, height, width = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cin, height, width, generator=g)
    w = torch.randn(cout, cin // groups, *kernel, generator=g).to(dtype)
    b = torch.randn(cout, generator=g) if bias else None
    return x, w, b


def geometry(case):
    return case[4], case[5], case[6], case[7]


def exact(x, w, b, case):
    stride, padding, dilation, groups = geometry(case)
    return F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, padding, dilation, groups)


def bound(x, w, b, case):
    """float32 rounding bound of each output against the exact sum (any summation order)."""
    stride, padding, dilation, groups = geometry(case)
    mag = F.conv2d(x.double().abs(), w.double().abs(), None, stride, padding, dilation, groups)
    if b is not None:
        mag = mag + b.double().abs()[:, None, None]
    k = w.shape[1] * w.shape[2] * w.shape[3]
    return (k + 2) * 2.0 ** -24 * mag + 1e-30


def check(y, x, w, b, case):
    ref = exact(x, w, b, case)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    err = (y.double() - ref).abs()
    assert bool((err <= bound(x, w, b, case)).all()), f"max error {float(err.max())}"


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_every_level_matches_the_exact_conv(isa, dtype, case, with_bias):
    x, w, b = rand_case(case, dtype, bias=with_bias)
    y = half_conv2d(x, w, b, *geometry(case))
    check(y, x, w, b, case)
    # torch's conv on the widened weight (the route it replaces) is within the same bound
    check(half_conv2d_reference(x, w, b, *geometry(case)), x, w, b, case)


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_non_contiguous_and_channels_last_inputs_give_the_contiguous_result(isa, dtype):
    case = CASES[9]
    x, w, b = rand_case(case, dtype)
    want = half_conv2d(x, w, b, *geometry(case))
    wide = torch.randn(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3])
    wide[..., ::2] = x
    for view in (wide[..., ::2], x.contiguous(memory_format=torch.channels_last)):
        assert torch.equal(half_conv2d(view, w, b, *geometry(case)), want)
    # a non-contiguous weight (a slice of a larger one) and a float16 bias
    big = torch.zeros(w.shape[0] * 2, *w.shape[1:], dtype=dtype)
    big[::2] = w
    assert torch.equal(half_conv2d(x, big[::2], b, *geometry(case)), want)
    check(half_conv2d(x, w, b.half(), *geometry(case)), x, w, b.half().float(), case)


def test_inputs_are_not_modified():
    case = CASES[1]
    x, w, b = rand_case(case, torch.float16)
    copies = [t.clone() for t in (x, w, b)]
    half_conv2d(x, w, b, *geometry(case))
    assert all(torch.equal(a, c) for a, c in zip((x, w, b), copies))


def test_threads_give_the_one_thread_result(isa):
    """Threads split im2col rows and output channels: every output is one thread's sum."""
    case = CASES[10]
    x, w, b = rand_case(case, torch.float16)
    args = (x.numpy(), w.numpy(), False, b.numpy(), *geometry(case))
    one = _C.h16_conv2d(*args, nthreads=1)
    assert np.array_equal(_C.h16_conv2d(*args, nthreads=2), one)
    assert np.array_equal(_C.h16_conv2d(*args, nthreads=5), one)


def test_inf_and_nan_follow_the_exact_conv(isa):
    case = CASES[0]
    x, w, b = rand_case(case, torch.float16)
    w[0, 0, 1, 1] = float("inf")
    x[0, 3, 4, 4] = float("nan")
    y = half_conv2d(x, w, b, *geometry(case))
    ref = exact(x, w, b, case)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))


def test_empty_batch_and_channels():
    w = torch.randn(4, 3, 3, 3).half()
    y = half_conv2d(torch.randn(0, 3, 5, 5), w, None, (1, 1), (1, 1), (1, 1), 1)
    assert y.shape == (0, 4, 5, 5)
    y = half_conv2d(torch.randn(2, 3, 5, 5), torch.randn(0, 3, 3, 3).half(), None, (1, 1), (0, 0), (1, 1), 1)
    assert y.shape == (2, 0, 3, 3)


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(1, 4, 5, 5).numpy()
    w = torch.randn(6, 4, 3, 3).half().numpy()
    one = ((1, 1), (1, 1), (1, 1))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _C.h16_conv2d(x.astype(np.float64), w, False, None, *one, 1)
    with pytest.raises(ValueError, match="must be 4-D"):
        _C.h16_conv2d(x[0], w, False, None, *one, 1)
    with pytest.raises(TypeError, match="bf16 bits"):
        _C.h16_conv2d(x, w, True, None, *one, 1)
    with pytest.raises(ValueError, match="the weight expects 2 per group"):
        _C.h16_conv2d(x, w[:, :2], False, None, *one, 1)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        _C.h16_conv2d(x, w, False, None, *one, 3)
    with pytest.raises(ValueError, match="bias has 5 entries, the weight 6 output channels"):
        _C.h16_conv2d(x, w, False, np.zeros(5, np.float32), *one, 1)
    with pytest.raises(ValueError, match="stride must be in 1"):
        _C.h16_conv2d(x, w, False, None, (0, 1), (1, 1), (1, 1), 1)
    with pytest.raises(TypeError, match="padding must be a pair of ints"):
        _C.h16_conv2d(x, w, False, None, (1, 1), 1, (1, 1), 1)
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        _C.h16_conv2d(x, w, False, None, (1, 1), (0, 0), (3, 3), 1)
    with pytest.raises(ValueError, match="nthreads"):
        _C.h16_conv2d(x, w, False, None, *one, 1, nthreads=0)
    with pytest.raises(TypeError, match="float16 or bfloat16 weight"):
        half_conv2d(torch.randn(1, 4, 5, 5), torch.randn(6, 4, 3, 3), None, *one, 1)


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_the_op_passes_opcheck(dtype):
    """Schema, fake implementation, autograd registration and dispatch of mono_quant::half_conv2d."""
    case = CASES[9]
    x, w, b = rand_case(case, dtype)
    stride, padding, dilation, groups = geometry(case)
    torch.library.opcheck(torch.ops.mono_quant.half_conv2d.default,
                          (x.requires_grad_(), w, b.requires_grad_(), list(stride), list(padding), list(dilation),
                           groups))


def test_the_op_backward_is_torchs_conv_backward():
    case = CASES[6]
    x, w, b = rand_case(case, torch.bfloat16)
    stride, padding, dilation, groups = geometry(case)
    xa, ba = x.clone().requires_grad_(), b.clone().requires_grad_()
    xb, bb = x.clone().requires_grad_(), b.clone().requires_grad_()
    ya = torch.ops.mono_quant.half_conv2d(xa, w, ba, list(stride), list(padding), list(dilation), groups)
    yb = F.conv2d(xb, w.float(), bb, stride, padding, dilation, groups)
    grad = torch.randn_like(yb)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(ba.grad, bb.grad)


@pytest.mark.skipif("avx2" not in SUPPORTED, reason="needs an AVX2 CPU")
def test_simd_levels_within_the_bound_of_the_scalar_reference():
    case = CASES[11]
    x, w, b = rand_case(case, torch.float16, seed=3)
    with at_isa("scalar"):
        ref = half_conv2d(x, w, b, *geometry(case))
    for level in SUPPORTED[1:]:
        with at_isa(level):
            y = half_conv2d(x, w, b, *geometry(case))
        assert bool(((y.double() - ref.double()).abs() <= 2 * bound(x, w, b, case)).all()), level
