"""The fp16 / bf16 weight linear (csrc/fp16.c): every kernel level against the scalar
reference and against torch's ``F.linear(x, w.float())`` on odd shapes (K tails, one
column, one row, rows past a tile and a block, K past a block), special fp16 values
(subnormals, inf, NaN, -0), strided inputs, threads and bad arguments."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mono_quant import _C
from mono_quant.kernels import reference
from mono_quant.kernels.fp16 import half_linear
from conftest import SUPPORTED, at_isa

HALF = [torch.float16, torch.bfloat16]

# (rows, in, out): tails of every width, one row / column, rows past a 4-row tile and the
# 128-row block, K past the 512-column block (with > 8 rows, where K is blocked)
SHAPES = [(1, 1, 1), (1, 7, 1), (2, 15, 3), (3, 16, 4), (4, 17, 5), (5, 31, 7), (9, 33, 13), (1, 1030, 37),
          (13, 1025, 25), (130, 40, 11), (7, 8, 12), (1, 64, 1)]


def rand_case(m, k, n, dtype, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g) if bias else None
    return x, w, b


def bound(x, w, b):
    """Float32 rounding bound of each output against the exact sum: (k + 2) ulp-ish of the
    magnitudes summed (any summation order)."""
    mag = x.double().abs() @ w.double().abs().T
    if b is not None:
        mag = mag + b.double().abs()
    return (x.shape[1] + 2) * 2.0 ** -24 * mag + 1e-30


def exact(x, w, b):
    return F.linear(x.double(), w.double(), None if b is None else b.double())


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_every_level_matches_the_exact_product(isa, dtype, shape, with_bias):
    x, w, b = rand_case(*shape, dtype, bias=with_bias)
    y = half_linear(x, w, b)
    assert y.dtype == torch.float32 and y.shape == (shape[0], shape[2])
    err = (y.double() - exact(x, w, b)).abs()
    assert bool((err <= bound(x, w, b)).all()), f"max error {float(err.max())}"


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_simd_levels_match_the_scalar_reference(dtype, shape):
    x, w, b = rand_case(*shape, dtype, seed=1)
    with at_isa("scalar"):
        ref = half_linear(x, w, b)
    twin = reference.half_linear(x, w, b)
    tol = 2 * bound(x, w, b)
    assert bool(((ref.double() - twin.double()).abs() <= tol).all())
    for level in SUPPORTED[1:]:
        with at_isa(level):
            y = half_linear(x, w, b)
        assert bool(((y.double() - ref.double()).abs() <= tol).all()), level


# fp16 bit patterns: subnormals (smallest, largest, negative), the largest normal, -0, 1
SPECIAL_FINITE = [0x0001, 0x03FF, 0x8001, 0x0200, 0x7BFF, 0xFBFF, 0x8000, 0x3C00, 0x0400]
SPECIAL_NONFINITE = [0x7C00, 0xFC00, 0x7E00]  # +inf, -inf, NaN


def fp16_from_bits(bits):
    return torch.tensor(np.array(bits, dtype=np.uint16).view(np.int16)).view(torch.float16)


def test_special_fp16_values_widen_exactly(isa):
    # one-hot rows pick single weights: the output is the widened weight itself, so it
    # must equal torch's conversion bit for bit (subnormals included)
    k = len(SPECIAL_FINITE) + 21  # a tail on every level
    bits = (SPECIAL_FINITE * 4)[:k]
    w = torch.stack([fp16_from_bits(bits[j:] + bits[:j]) for j in range(5)])  # 5 rows, rotated
    x = torch.eye(k)
    y = half_linear(x, w, None)
    expected = w.float().T.contiguous() + 0.0  # a sum starts at +0: -0 comes out as +0 (as from F.linear)
    assert torch.equal(y.view(torch.int32), expected.view(torch.int32))


def test_inf_and_nan_weights_follow_torch(isa):
    k = 19
    bits = [0x3C00] * k
    bits[3], bits[8], bits[17] = SPECIAL_NONFINITE
    w = torch.stack([fp16_from_bits(bits), fp16_from_bits([0x3C00] * k), fp16_from_bits([0x7C00] + [0] * (k - 1))])
    x = torch.randn(6, k)
    x[2] = 0.0  # 0 * inf = NaN, as in torch
    torch.testing.assert_close(half_linear(x, w, None), F.linear(x, w.float()), equal_nan=True)


def test_bf16_widening_is_exact(isa):
    w = torch.tensor([[1e-40, -3.0e38, 1.5, -2.5e-39], [0.0, -0.0, 2.0 ** -130, 7.0]]).to(torch.bfloat16)
    y = half_linear(torch.eye(4), w, None)
    assert torch.equal(y.T.contiguous().view(torch.int32), (w.float() + 0.0).view(torch.int32))


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_strided_inputs_give_the_contiguous_result(isa, dtype):
    x, w, b = rand_case(6, 37, 9, dtype)
    y = half_linear(x, w, b)
    wide = torch.zeros(6, 74)
    wide[:, ::2] = x
    x_t = x.T.contiguous().T  # column-major
    w_t = w.T.contiguous().T
    b_s = torch.zeros(18)
    b_s[::2] = b
    for xs, ws, bs in [(wide[:, ::2], w, b), (x_t, w, b), (x, w_t, b), (x, w, b_s[::2])]:
        assert torch.equal(half_linear(xs, ws, bs), y)


def test_inputs_are_not_modified():
    x, w, b = rand_case(5, 33, 7, torch.float16)
    copies = [t.clone() for t in (x, w, b)]
    half_linear(x, w, b)
    for t, c in zip((x, w, b), copies):
        assert torch.equal(t, c)


def test_threads_give_the_one_thread_result(isa):
    # past the one-thread threshold (2^24 multiply-adds): outputs split over threads, each
    # computed as on one thread
    x, w, b = rand_case(70, 512, 600, torch.float16)
    xn, wn, bn = x.numpy(), w.numpy(), b.numpy()
    one = _C.h16_linear(xn, wn, False, bias=bn, nthreads=1)
    for threads in (2, 3):
        assert np.array_equal(_C.h16_linear(xn, wn, False, bias=bn, nthreads=threads), one)


def test_empty_shapes():
    w = torch.randn(4, 3).half()
    assert half_linear(torch.randn(0, 3), w, None).shape == (0, 4)
    b = torch.randn(4)
    y = _C.h16_linear(np.zeros((2, 0), np.float32), np.zeros((4, 0), np.float16), False, bias=b.numpy())
    assert np.array_equal(y, np.tile(b.numpy(), (2, 1)))  # an empty sum: the bias alone


def test_bad_arguments_raise_clear_errors():
    x = np.zeros((2, 3), np.float32)
    w = np.zeros((4, 3), np.float16)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _C.h16_linear(x.astype(np.float64), w, False)
    with pytest.raises(ValueError, match="x has 3 features, the weight"):
        _C.h16_linear(x, np.zeros((4, 5), np.float16), False)
    with pytest.raises(ValueError, match="bias has 3 entries, the weight 4 rows"):
        _C.h16_linear(x, w, False, bias=np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="bf16 bits"):
        _C.h16_linear(x, w, True)  # bf16 crosses as int16 bits, never as float16
    with pytest.raises(ValueError, match="must be 2-D"):
        _C.h16_linear(x, np.zeros(3, np.float16), False)
    with pytest.raises(ValueError, match="nthreads"):
        _C.h16_linear(x, w, False, nthreads=0)
    with pytest.raises(TypeError, match="float16 or bfloat16 weight"):
        half_linear(torch.zeros(2, 3), torch.zeros(4, 3), None)
