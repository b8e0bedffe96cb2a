"""Weight-only int8 matmul, bit for bit: every kernel level against a NumPy model of the
summation order it promises (mq.h, mq_wgemm_args), on odd shapes.

  scalar (ref.c's mq_ref_wgemm): one fp32 sum per output over k in order, a rounded
      product then a rounded add.
  SIMD levels (avx2, avx512): four partial sums per output, lane j over k = 4g + j in
      order of g, each step one fused multiply-add (a single rounding); the output is
      ((lane0 + lane1) + (lane2 + lane3)) * scale, then + bias where there is one.

Whatever tile, buffer or K-block a kernel uses, it must keep that order: the shapes cross
the AVX-512 buffered path's limits (3+ rows, a K-block of 64 groups = 256 k, row blocks
of up to 96 rows, 6-row tiles) and the AVX2 tiles (1 row, 2 rows, 3-6 row quarters)."""
import numpy as np
import pytest

from mono_quant import _C

ROWS = [1, 2, 3, 5, 7, 8, 13, 65, 129]


def _fma32(a, b, c):
    """fp32 fma(a, b, c) with one rounding, elementwise: a * b is exact in fp64 (the weight
    is an integer of at most 9 bits), the fp64 sum's error is recovered exactly (TwoSum)
    and folded in by rounding to odd, which makes the final rounding to fp32 correct."""
    p = a.astype(np.float64) * b.astype(np.float64)
    c = c.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = p + c
        bb = s - p
        err = (p - (s - bb)) + (c - bb)
        inexact = np.isfinite(s) & (err != 0) & ((s.view(np.int64) & 1) == 0)
        toward = np.where(err > 0, np.inf, -np.inf)
        s = np.where(inexact, np.nextafter(s, toward), s)
        return s.astype(np.float32)


def _model(level, x, wv, scale, bias):
    """The outputs level's kernel must give: x [m, kp] fp32, wv [n, kp] fp32 (w - zp)."""
    m, kp = x.shape
    n = wv.shape[0]
    if level == "scalar":
        acc = np.zeros((m, n), np.float32)
        for k in range(kp):
            acc = acc + x[:, k:k + 1] * wv[None, :, k]
    else:
        lanes = [np.zeros((m, n), np.float32) for _ in range(4)]
        for k in range(kp):
            j = k % 4
            lanes[j] = _fma32(x[:, k:k + 1], wv[None, :, k], lanes[j])
        acc = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
    y = acc * scale[None, :]
    return y if bias is None else y + bias[None, :]


def _case(n, k, zero_points, extremes, seed):
    rng = np.random.default_rng(seed)
    if extremes:  # the int8 range's ends, and zero-points at theirs: w - zp from -255 to 255
        w = rng.choice(np.array([-128, -127, 127, 0, 1, -1], np.int8), size=(n, k))
        zp = rng.choice(np.array([-128, 127, 0], np.int32), size=n) if zero_points else None
    else:
        w = rng.integers(-128, 128, size=(n, k), dtype=np.int8)
        zp = rng.integers(-20, 21, size=n).astype(np.int32) if zero_points else None
    scale = (rng.random(n, dtype=np.float32) * 0.02 + 1e-3).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if seed % 2 else None
    return w, zp, scale, bias


def _run(x, w, zp, scale, bias, nthreads=1):
    n = w.shape[0]
    packed, w_sum, has_m128 = _C.pack_int8(np.ascontiguousarray(w))
    zps = zp if zp is not None else np.zeros(n, np.int32)
    return _C.linear_int8(x, packed, w_sum, scale, zps, bias, n, has_m128, mode="weight_only", nthreads=nthreads)


def _check(isa, x, w, zp, scale, bias, nthreads=1):
    m, k = x.shape
    kp = -(-k // 4) * 4
    xp = np.zeros((m, kp), np.float32)
    xp[:, :k] = x
    wv = np.zeros((w.shape[0], kp), np.float32)
    wv[:, :k] = w.astype(np.float32) - (0 if zp is None else zp[:, None].astype(np.float32))
    y = _run(x, w, zp, scale, bias, nthreads)
    want = _model(isa, xp, wv, scale, bias)
    assert y.shape == want.shape
    np.testing.assert_array_equal(y.view(np.int32), want.view(np.int32), err_msg=f"{isa} m={m} k={k}")


@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
@pytest.mark.parametrize("n,k", [(1, 7), (13, 70), (16, 259), (35, 5), (50, 517)])
def test_every_level_keeps_its_summation_order(isa, n, k, zero_points):
    """Row counts 1..129 (every tile size, row blocks of up to 96), K tails not a multiple of 4,
    K past one and two 256-k blocks, channel tails of a 16-channel panel; bias present and absent."""
    w, zp, scale, bias = _case(n, k, zero_points, extremes=False, seed=n * 7 + k + zero_points)
    x = np.random.default_rng(k).standard_normal((max(ROWS), k)).astype(np.float32)
    for m in ROWS:
        _check(isa, np.ascontiguousarray(x[:m]), w, zp, scale, bias)


@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero_points"])
@pytest.mark.parametrize("m", [1, 6, 13])
def test_extremes_and_zero_rows(isa, m, zero_points):
    """Weights at -128 / 127 with zero-points at the ends of the range, activations from
    1e-30 to 1e30 (products and sums that lose bits, none that overflow) and all-zero rows."""
    n, k = 37, 299
    w, zp, scale, bias = _case(n, k, zero_points, extremes=True, seed=m)
    rng = np.random.default_rng(m)
    x = (rng.standard_normal((m, k)) * 10.0 ** rng.integers(-30, 31, size=(m, k))).astype(np.float32)
    x[m // 2] = 0.0
    x[0, : k // 3] = -0.0
    _check(isa, x, w, zp, scale, bias)
    _check(isa, x, w, zp, scale, None)


@pytest.mark.parametrize("nthreads", [2, 3])
def test_threads_keep_the_order(isa, nthreads):
    """A call past the one-thread threshold, cut over panels and row blocks."""
    w, zp, scale, bias = _case(40, 1100, True, extremes=False, seed=5)
    x = np.random.default_rng(3).standard_normal((200, 1100)).astype(np.float32)
    _check(isa, x, w, zp, scale, bias, nthreads)


def test_fma_model_rounds_once():
    """The model's fma against cases where a product then a sum would round twice."""
    a = np.array([1 + 2.0**-23, 1.0, 3.0], np.float32)
    b = np.array([1 - 2.0**-23, 1.0, 1.0 / 3.0], np.float32)
    c = np.array([-1.0, 2.0**-30, -1.0], np.float32)
    exact = a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)  # exact for these
    np.testing.assert_array_equal(_fma32(a, b, c), exact.astype(np.float32))
    assert _fma32(a, b, c)[0] == np.float32(-(2.0**-46))  # a * b rounded first would give 0
