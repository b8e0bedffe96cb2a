"""Weight-only int8 matmul tiles on every kernel level against the scalar twin
(ref.c's mq_ref_wgemm, the "scalar" level) and against fp64 on the dequantized
weight: every row count's split into tiles (1 row, 2 rows, 3-6 row tiles, the
even split of 7-14 rows, 5-row tiles with zero-points), every channel tail of
a 16-channel panel (1, 3, 4, 5, 9, 13, 17 channels), K not a multiple of 4; and the int4
int8-activation kernel's row pairs against its reference."""
import numpy as np
import pytest
import torch

from mono_quant import _C, quantize_weight
from conftest import at_isa

ROWS = list(range(1, 15)) + [17, 23, 31]


def _layer(n, k, symmetric, seed):
    g = torch.Generator().manual_seed(seed)
    qw = quantize_weight(torch.randn(n, k, generator=g) + (0.0 if symmetric else 0.4), symmetric=symmetric)
    packed, w_sum, has_m128 = _C.pack_int8(np.ascontiguousarray(qw.qdata.numpy()))
    scale, zp = qw.scale.float().numpy(), qw.zero_point.int().numpy()
    bias = torch.randn(n, generator=g).numpy()
    return qw, (packed, w_sum, scale, zp, bias, n, has_m128)


def _run(x, args, nthreads=1):
    packed, w_sum, scale, zp, bias, n, has_m128 = args
    return _C.linear_int8(x, packed, w_sum, scale, zp, bias, n, has_m128, mode="weight_only", nthreads=nthreads)


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "zero_points"])
@pytest.mark.parametrize("n", [1, 3, 4, 5, 9, 13, 17, 35])
@pytest.mark.parametrize("k", [1, 6, 70])
def test_tiles_match_scalar_twin(isa, symmetric, n, k):
    qw, args = _layer(n, k, symmetric, seed=n * 1000 + k)
    x = torch.randn(max(ROWS), k, generator=torch.Generator().manual_seed(k)).numpy()
    wd = qw.dequantize().double()
    for m in ROWS:
        xm = np.ascontiguousarray(x[:m])
        y = _run(xm, args)
        with at_isa("scalar"):
            twin = _run(xm, args)
        exact = torch.from_numpy(xm).double() @ wd.T + torch.from_numpy(args[4]).double()
        magnitude = torch.from_numpy(xm).double().abs() @ wd.abs().T + torch.from_numpy(args[4]).double().abs()
        # fp32 sums of k products in any order: within (k + 2) ulps of the sum of magnitudes
        bound = magnitude * (k + 2) * 2.0**-23
        for out in (y, twin):
            assert out.shape == (m, n)
            assert bool(((torch.from_numpy(out).double() - exact).abs() <= bound).all()), (isa, m)
        assert np.allclose(y, twin, rtol=1e-5, atol=1e-5 * float(np.abs(twin).max())), m


@pytest.mark.parametrize("m", [3, 5, 6, 8, 13])
def test_tiles_keep_nonfinite_rows(isa, m):
    """A NaN or Inf in one row of a multi-row tile spoils that row only."""
    _, args = _layer(20, 40, True, seed=3)
    x = torch.randn(m, 40, generator=torch.Generator().manual_seed(m)).numpy()
    x[m // 2, 7] = np.nan
    x[m - 1, 0] = np.inf
    y = _run(x, args)
    assert not np.isfinite(y[m // 2]).any() and not np.isfinite(y[m - 1]).all()
    good = [i for i in range(m) if i not in (m // 2, m - 1)]
    assert np.isfinite(y[good]).all()


@pytest.mark.parametrize("nthreads", [2, 3])
def test_tiles_same_with_threads(isa, nthreads):
    """Threads split whole panels (a call past the one-thread threshold of 2^24 multiply-adds):
    each output is computed by the same tile, so the same bits."""
    _, args = _layer(300, 1500, False, seed=9)
    x = torch.randn(40, 1500, generator=torch.Generator().manual_seed(1)).numpy()
    assert np.array_equal(_run(x, args, nthreads), _run(x, args, 1))


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "zero_points"])
@pytest.mark.parametrize("n, k, m", [(35, 70, 31), (35, 70, 32), (17, 6, 45), (13, 9, 64), (40, 4100, 70), (40, 4100, 130),
                                     (40, 4100, 121), (40, 4100, 122), (21, 1500, 400)])
def test_many_rows_same_bits_as_each_row_alone(isa, symmetric, n, k, m):
    """From 32 rows (AVX-512) or 64 (AVX2) the tiles read each panel converted once per block of
    rows (WBUF_MIN_ROWS in x86/avx512/linear.c and x86/avx2/linear.c; blocks of about 1 MiB of
    activations: 4100 columns give 60-row blocks, 1500 give 174; at AVX2 a last block of 1-2 rows,
    121 and 122 rows here, joins the one before): each row's bits as alone
    (1 row: the GEMV tiles) and as among 3 rows (the converting tiles), channel tails and
    zero-points included."""
    qw, args = _layer(n, k, symmetric, seed=n + k + m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).numpy() * 2
    y = _run(x, args)
    for i in sorted({0, 1, m // 2, m - 2, m - 1}):
        assert np.array_equal(y[i], _run(np.ascontiguousarray(x[i:i + 1]), args)[0]), i
        lo = min(i, m - 3)
        assert np.array_equal(y[lo:lo + 3], _run(np.ascontiguousarray(x[lo:lo + 3]), args)), i
    wd = qw.dequantize().double()
    exact = torch.from_numpy(x).double() @ wd.T + torch.from_numpy(args[4]).double()
    magnitude = torch.from_numpy(x).double().abs() @ wd.abs().T + torch.from_numpy(args[4]).double().abs()
    assert bool(((torch.from_numpy(y).double() - exact).abs() <= magnitude * (k + 2) * 2.0**-23).all())


# ---- int4 with int8 activations: tiles of 2 activation rows x 4 weight rows ---------------------


@pytest.mark.parametrize("rows,cols,group", [(4, 128, 128), (13, 384, 128), (8, 512, 256)])
def test_int4_row_pairs_exact_vs_reference(isa, rows, cols, group):
    """Every activation row count (pairs, an odd last row, one row alone) and weight rows
    past a multiple of 4 give the scalar reference's bits (integer dot products, the same
    float epilogue)."""
    from mono_quant.int4 import quantize_int4

    qw, _ = quantize_int4(torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows)), group_size=group)
    x = torch.randn(9, cols, generator=torch.Generator().manual_seed(cols)).numpy()
    for m in range(1, 10):
        args = (np.ascontiguousarray(x[:m]), qw.qdata.numpy(), qw.scale.numpy(), qw.zero_point.numpy(), qw.group)
        with at_isa("scalar"):
            want = _C.q4_linear(*args, int8_activations=1)
        np.testing.assert_array_equal(_C.q4_linear(*args, int8_activations=1), want, err_msg=f"{isa} m={m}")
