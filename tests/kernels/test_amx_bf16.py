"""fp16 / bf16 weights and int8 weight-only on AMX-BF16 (x86/amx/bf16_pieces.c): x split into
three bf16 pieces and the weight into one (bf16; int8 minus its zero-point) or two (fp16) with
exact sums, every product exact, the sums in fp32 by tdpbf16ps.  Not the other paths' bits (its
own path, by the rows): checked against float64 within fp32 accumulation's bound, at the tile
edges (rows, channels and k around 16 / 32), with infinities, NaN, huge and subnormal values,
strided and 16-bit activations, at 1 and 2 threads (same bits), and through a module eager and
exported.  Skipped where the CPU (or the OS) has no AMX-BF16."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mono_quant as mq
from mono_quant import _C
from mono_quant import kernels
from mono_quant.kernels import SETTINGS
from mono_quant.kernels.fp16 import half_path
from mono_quant.kernels import row_rules
from mono_quant.kernels.row_rules import HALF_AMX_MIN_ROWS
from conftest import AMX, at_isa

AMX_BF16 = AMX and bool(_C.cpu_info()["amx_bf16"])
needs_amx_bf16 = pytest.mark.skipif(not AMX_BF16, reason="the CPU or the OS has no AMX-BF16")
U = 2.0 ** -24


def _weight(n, k, bf16, rng):
    w = torch.from_numpy((rng.standard_normal((n, k)) * rng.uniform(0.01, 3, (n, 1))).astype(np.float32))
    w = w.bfloat16() if bf16 else w.half()
    return w, (w.view(torch.int16).numpy() if bf16 else w.numpy())


def _amx(x, w_arr, bf16, bias=None, nthreads=1):
    with at_isa("avx512"):
        assert _C.linear_kernels()["half_many_rows"] == "amx_bf16"
        return _C.h16_linear(x, w_arr, bf16, bias=bias, nthreads=nthreads, panels=2)


def _within_fp32_bound(y, x, w, bias):
    """|y - exact| <= (5 k + 2) u sum |x w| (+ |bias|) per output: fp32 summation's bound with
    each term added as up to 5 exact partial products."""
    x64, w64 = x.astype(np.float64), w.double().numpy()
    exact = x64 @ w64.T + (0 if bias is None else bias.astype(np.float64))
    mag = np.abs(x64) @ np.abs(w64).T + (0 if bias is None else np.abs(bias.astype(np.float64)))
    bound = (5 * x.shape[1] + 2) * U * mag + 1e-300
    return np.all(np.abs(y.astype(np.float64) - exact) <= bound)


@needs_amx_bf16
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("k", [1, 7, 31, 32, 33, 100, 384])
def test_tile_edges_within_fp32_bound(bf16, k):
    rng = np.random.default_rng(k + 100 * bf16)
    for m in (1, 15, 16, 17, 33, 100):
        for n in (1, 15, 16, 17, 33, 48):
            w, w_arr = _weight(n, k, bf16, rng)
            x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10, (m, 1))).astype(np.float32)
            bias = rng.standard_normal(n).astype(np.float32) if n % 2 else None
            y = _amx(x, w_arr, bf16, bias)
            assert y.shape == (m, n)
            assert _within_fp32_bound(y, x, w, bias), (m, n)


@needs_amx_bf16
@pytest.mark.parametrize("bf16", [False, True])
def test_as_accurate_as_the_blas(bf16):
    # every bit of x and w reaches the products: the error is fp32 summation's, like torch's
    rng = np.random.default_rng(7)
    w, w_arr = _weight(300, 768, bf16, rng)
    x = rng.standard_normal((200, 768)).astype(np.float32)
    exact = x.astype(np.float64) @ w.double().numpy().T
    amx_err = np.abs(_amx(x, w_arr, bf16) - exact).max()
    blas_err = np.abs(F.linear(torch.from_numpy(x), w.float()).numpy() - exact).max()
    assert amx_err <= 4 * blas_err
    cut = x.view(np.uint32) & np.uint32(0xFFFF0000)  # x cut to bf16: what dropping the pieces would give
    cut_err = np.abs(cut.view(np.float32).astype(np.float64) @ w.double().numpy().T - exact).max()
    assert amx_err < cut_err / 100


@needs_amx_bf16
@pytest.mark.parametrize("bf16", [False, True])
def test_special_values_as_the_float_product(bf16):
    # infinities and NaN (in x or the weight) hand the call to the panel path: the float product's
    rng = np.random.default_rng(3)
    w, w_arr = _weight(40, 96, bf16, rng)
    x = rng.standard_normal((36, 96)).astype(np.float32)
    x[1, 5], x[2, 7], x[3, 9] = np.inf, -np.inf, np.nan
    x[4, :] = 0.0
    x[4, 10] = np.float32(3.4e38)  # huge: the top piece must not round up to infinity
    x[5, :] = 0.0
    x[6, :] = -0.0
    x[7, :] = 0.0
    x[7, 3] = np.float32(2.0 ** 127)  # the largest power of two
    got = _amx(x, w_arr, bf16)
    want = F.linear(torch.from_numpy(x), w.float()).numpy()
    with at_isa("avx512"):
        np.testing.assert_array_equal(got, _C.h16_linear(x, w_arr, bf16, panels=1))
    finite_x = x[4:]  # huge, zeros: the pieces' path, as close as the float product (overflow alike)
    got, want = _amx(finite_x, w_arr, bf16), want[4:]
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    assert np.isinf(want[0]).any() and np.isfinite(want[0]).any()  # 3.4e38 x w: both sides of FLT_MAX
    ok = np.isfinite(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-5, atol=1e-5 * np.abs(want[ok]).max())
    w2 = w.clone()
    w2[3, 4] = float("inf")
    w2[5, 6] = float("nan")
    w2_arr = w2.view(torch.int16).numpy() if bf16 else w2.numpy()
    with at_isa("avx512"):
        np.testing.assert_array_equal(_amx(finite_x, w2_arr, bf16), _C.h16_linear(finite_x, w2_arr, bf16, panels=1))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5 * np.abs(want[finite]).max())
    assert np.all(got[1] == 0) and np.all(got[2] == 0)  # x rows 5, 6: zeros


@needs_amx_bf16
def test_subnormal_activations_add_nothing():
    # AMX reads bf16 subnormals as zero (documented): x under ~1e-38 contributes 0
    w, w_arr = _weight(16, 32, False, np.random.default_rng(0))
    x = np.full((16, 32), 1e-39, np.float32)
    assert np.all(_amx(x, w_arr, False) == 0)


@needs_amx_bf16
@pytest.mark.parametrize("m, n, k", [(1000, 64, 1024), (300, 1000, 384), (2048, 48, 3072)])
def test_two_threads_same_bits_as_one(m, n, k):
    rng = np.random.default_rng(m)
    w, w_arr = _weight(n, k, False, rng)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    one = _amx(x, w_arr, False, bias, nthreads=1)
    before = int(_C.linear_kernels()["split_calls"])
    np.testing.assert_array_equal(_amx(x, w_arr, False, bias, nthreads=2), one)
    assert int(_C.linear_kernels()["split_calls"]) > before
    rows = one[::97]  # each row alone: its bits in any batch
    np.testing.assert_array_equal(_amx(np.ascontiguousarray(x[::97]), w_arr, False, bias), rows)


@needs_amx_bf16
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_module_eager_and_exported_take_it(dtype):
    torch.manual_seed(0)
    q = mq.quantize(torch.nn.Linear(70, 37), dtype=dtype).model
    w = q._buffers["weight"]
    w_arr = w.view(torch.int16).numpy() if dtype == "bf16" else w.numpy()
    rows = torch.export.Dim("rows", min=1, max=4096)
    ep = torch.export.export(q, (torch.randn(8, 70),), dynamic_shapes=({0: rows},))
    first = HALF_AMX_MIN_ROWS["avx512"]
    threads = torch.get_num_threads()
    try:
        with at_isa("avx512"), torch.no_grad():
            for nt in (1, 2):  # a rule on the rows alone: the same path (and bits) at any thread count
                torch.set_num_threads(nt)
                assert half_path(first - 1, 70, 37, "avx512") != "amx" and half_path(first, 70, 37, "avx512") == "amx"
            torch.set_num_threads(1)
            for m in (first, 300):
                assert half_path(m, 70, 37, "avx512") == "amx"
                x = torch.randn(m, 70)
                y = q(x)
                assert torch.equal(ep.module()(x), y)
                want = _C.h16_linear(x.numpy(), w_arr, dtype == "bf16", bias=q.bias.numpy(), nthreads=1, panels=2)
                assert torch.equal(y, torch.from_numpy(want))
                with SETTINGS.for_tests(amx=False):
                    assert half_path(m, 70, 37, "avx512") != "amx"
                    off = q(x)
                torch.testing.assert_close(off, y, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_without_amx_bf16_the_request_takes_the_panels():
    # panels=2 where the level has no AMX-BF16 kernel: the panel path's bits (or the tiles')
    rng = np.random.default_rng(1)
    w, w_arr = _weight(20, 40, False, rng)
    x = rng.standard_normal((50, 40)).astype(np.float32)
    with at_isa("avx2" if "avx2" in _C.cpu_info()["best_isa"] or AMX else "scalar"):
        np.testing.assert_array_equal(_C.h16_linear(x, w_arr, False, panels=2), _C.h16_linear(x, w_arr, False, panels=1))
    with pytest.raises(ValueError, match="panels must be 0, 1 or 2"):
        _C.h16_linear(x, w_arr, False, panels=3)


# ---- int8 weight-only (mode "weight_only_amx") --------------------------------------------------

def _packed(n, k, rng, zp_range=5):
    w = torch.from_numpy(rng.integers(-128, 128, (n, k), dtype=np.int8))
    w[::3, ::5] = -128
    w[1::4, 1::3] = 127
    p, w_sum, m128 = kernels.pack_int8(w)
    scale = (rng.random(n) * 1e-2 + 1e-4).astype(np.float32)
    zp = rng.integers(-zp_range, zp_range + 1, n).astype(np.int32)
    return w, (p.numpy(), w_sum.numpy(), scale, zp), m128


def _wo(x, packed, n, m128, bias=None, mode="weight_only_amx", nthreads=1):
    p, w_sum, scale, zp = packed
    with at_isa("avx512"):
        return _C.linear_int8(x, p, w_sum, scale, zp, bias, n, m128, mode=mode, nthreads=nthreads)


@needs_amx_bf16
@pytest.mark.parametrize("k", [1, 3, 4, 31, 32, 33, 100, 384])
def test_weight_only_tile_edges_within_fp32_bound(k):
    rng = np.random.default_rng(k)
    for m in (1, 15, 16, 17, 33, 100):
        for n in (1, 15, 16, 17, 33, 48):
            w, packed, m128 = _packed(n, k, rng)
            x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10, (m, 1))).astype(np.float32)
            bias = rng.standard_normal(n).astype(np.float32) if n % 2 else None
            y = _wo(x, packed, n, m128, bias)
            wf = (w.double() - torch.from_numpy(packed[3]).double()[:, None]) * torch.from_numpy(packed[2]).double()[:, None]
            assert _within_fp32_bound(y, x, wf, bias), (m, n)


@needs_amx_bf16
def test_weight_only_as_accurate_as_the_tiles():
    rng = np.random.default_rng(5)
    w, packed, m128 = _packed(300, 768, rng, zp_range=60)
    x = rng.standard_normal((200, 768)).astype(np.float32)
    wf = (w.double() - torch.from_numpy(packed[3]).double()[:, None]) * torch.from_numpy(packed[2]).double()[:, None]
    exact = x.astype(np.float64) @ wf.numpy().T
    amx_err = np.abs(_wo(x, packed, 300, m128) - exact).max()
    tiles_err = np.abs(_wo(x, packed, 300, m128, mode="weight_only") - exact).max()
    assert amx_err <= 4 * tiles_err


@needs_amx_bf16
def test_weight_only_declines_to_the_tiles():
    # an infinity or NaN in x, or 16-bit activations: the tiles' path and bits
    rng = np.random.default_rng(6)
    w, packed, m128 = _packed(40, 96, rng)
    x = rng.standard_normal((36, 96)).astype(np.float32)
    x[3, 7] = np.inf
    x[9, 1] = np.nan
    np.testing.assert_array_equal(_wo(x, packed, 40, m128), _wo(x, packed, 40, m128, mode="weight_only"))
    xh = x[10:].astype(np.float16)
    np.testing.assert_array_equal(_wo(xh, packed, 40, m128), _wo(xh, packed, 40, m128, mode="weight_only"))


@needs_amx_bf16
def test_weight_only_strided_rows_and_threads():
    rng = np.random.default_rng(8)
    w, packed, m128 = _packed(1000, 384, rng)
    wide = rng.standard_normal((300, 500)).astype(np.float32)
    x = wide[:, 50:434]  # rows 500 floats apart
    one = _wo(x, packed, 1000, m128)
    np.testing.assert_array_equal(_wo(np.ascontiguousarray(x), packed, 1000, m128), one)
    before = int(_C.linear_kernels()["split_calls"])
    np.testing.assert_array_equal(_wo(x, packed, 1000, m128, nthreads=2), one)
    assert int(_C.linear_kernels()["split_calls"]) > before


@needs_amx_bf16
@pytest.mark.parametrize("m, n, k, splits", [(16, 440, 440, True), (64, 440, 208, True), (16, 128, 256, False)])
def test_weight_only_few_rows_split_from_a_million_products(m, n, k, splits):
    # a 1x1 conv of a small map (440 -> 440 on 4x4: 3 M multiply-adds) splits at 2 threads: on one thread it
    # held RegNet-Y at 0.91x fp32's speed there (csrc/amx_bf16.c ONE_THREAD_MACS); 0.5 M stays on one
    rng = np.random.default_rng(m + n + k)
    w, packed, m128 = _packed(n, k, rng)
    x = rng.standard_normal((m, k)).astype(np.float32)
    one = _wo(x, packed, n, m128)
    before = int(_C.linear_kernels()["split_calls"])
    np.testing.assert_array_equal(_wo(x, packed, n, m128, nthreads=2), one)
    assert (int(_C.linear_kernels()["split_calls"]) > before) == splits


@needs_amx_bf16
def test_weight_only_module_eager_and_exported_take_it():
    torch.manual_seed(1)
    q = mq.quantize(torch.nn.Linear(70, 37), activations=None).model
    rows = torch.export.Dim("rows", min=1, max=4096)
    ep = torch.export.export(q, (torch.randn(8, 70),), dynamic_shapes=({0: rows},))
    with at_isa("avx512"), torch.no_grad():
        for m in (16, 300):
            x = torch.randn(m, 70)
            y = q(x)
            assert torch.equal(ep.module()(x), y)
            exact = x.double() @ q.dequantized_weight().double().T + q.bias.double()
            torch.testing.assert_close(y.double(), exact, rtol=1e-5, atol=1e-5)
            with SETTINGS.for_tests(amx=False):
                off = q(x)
            # AMX from 16 rows and INT8_WEIGHT_ONLY_AMX_MIN_MACS (16 x 70 x 37 is below: the tiles' call)
            amx = m * 70 * 37 >= row_rules.INT8_WEIGHT_ONLY_AMX_MIN_MACS
            assert m == 300 and amx and not torch.equal(off, y) or m == 16 and not amx and torch.equal(off, y)
            torch.testing.assert_close(off, y, rtol=1e-5, atol=1e-5)


@needs_amx_bf16
def test_weight_only_conv_rows_take_it_as_a_linear_would():
    """A weight-only conv on the packed route (few pixels: a 1x1 conv's pixels are its rows) takes AMX-BF16
    where a Linear of those rows would (row_rules.int8_weight_only_takes_amx), eager and exported alike."""
    from mono_quant.modules import conv as conv_module
    torch.manual_seed(2)
    q = mq.quantize(torch.nn.Sequential(torch.nn.Conv2d(440, 440, 1)), activations=None).model
    x = torch.randn(1, 440, 4, 4)  # 16 pixel rows
    with at_isa("avx512"), torch.no_grad():
        y = q(x)
        assert conv_module._ROUTES.get(q[0])[5] == "pointwise"  # (the packed route's call, kept)
        assert torch.equal(torch.export.export(q, (x,)).module()(x), y)
        assert torch.equal(q(x.contiguous(memory_format=torch.channels_last)), y)  # (_packed_conv's own call)
        exact = F.conv2d(x.double(), q[0].dequantized_weight(torch.float32).double(), q[0].bias.double())
        torch.testing.assert_close(y.double(), exact, rtol=1e-5, atol=1e-5)
        with SETTINGS.for_tests(amx=False):
            off = q(x)
        assert not torch.equal(off, y)  # (the tiles' bits: another path)
        torch.testing.assert_close(off, y, rtol=1e-5, atol=1e-5)
        one_pixel = torch.randn(16, 440, 1, 1)  # a squeeze-excitation's conv: its own route, the same rule
        y = q(one_pixel)
        assert conv_module._ROUTES.get(q[0])[5] == "one pixel"
        assert torch.equal(torch.export.export(q, (one_pixel,)).module()(one_pixel), y)
        assert torch.equal(q(one_pixel.transpose(0, 1).contiguous().transpose(0, 1)), y)  # (strided: _packed_conv)


@pytest.fixture
def amx_split():
    """Force the AMX-BF16 call's split (1: panel pairs, 2: row tiles); back to the rule after."""
    yield _C.amx_split_for_tests
    _C.amx_split_for_tests(0)


def _both_splits(call, amx_split):
    """call() by panel pairs and by row tiles, which must give the same bits; the rule's too."""
    amx_split(1)
    pairs = call()
    amx_split(2)
    rows = call()
    amx_split(0)
    np.testing.assert_array_equal(pairs, rows)
    np.testing.assert_array_equal(call(), rows)
    return rows


@needs_amx_bf16
@pytest.mark.parametrize("kind", ["fp16", "bf16", "int8"])
@pytest.mark.parametrize("k", [1, 33, 384, 3000])
def test_panel_pairs_same_bits_as_row_tiles(kind, k, amx_split):
    # few rows split over panel pairs (each packing its own pairs' B tiles, in groups; an odd panel
    # count leaves a lone panel), many over row tiles: the same sums in the same order (100 rows: a
    # narrow weight's row tiles in several chunks of x's pieces, the last one short)
    rng = np.random.default_rng(k)
    for m in (1, 16, 17, 40, 100):
        for n in (1, 17, 32, 33, 100):
            x = rng.standard_normal((m, k)).astype(np.float32)
            bias = rng.standard_normal(n).astype(np.float32) if n % 2 else None
            for nthreads in (1, 2):
                if kind == "int8":
                    w, packed, m128 = _packed(n, k, rng)
                    _both_splits(lambda: _wo(x, packed, n, m128, bias, nthreads=nthreads), amx_split)
                else:
                    w, w_arr = _weight(n, k, kind == "bf16", rng)
                    _both_splits(lambda: _amx(x, w_arr, kind == "bf16", bias, nthreads=nthreads), amx_split)


@needs_amx_bf16
@pytest.mark.parametrize("bf16", [False, True])
def test_panel_pairs_decline_a_non_finite_weight(bf16, amx_split):
    # an infinity in the last panel pair only: every split hands the call to the panel path
    rng = np.random.default_rng(11)
    w, w_arr = _weight(70, 200, bf16, rng)
    w[69, 150] = float("inf")
    w_arr = w.view(torch.int16).numpy() if bf16 else w.numpy()
    x = rng.standard_normal((20, 200)).astype(np.float32)
    with at_isa("avx512"):
        want = _C.h16_linear(x, w_arr, bf16, panels=1)
    for nthreads in (1, 2):
        np.testing.assert_array_equal(_both_splits(lambda: _amx(x, w_arr, bf16, nthreads=nthreads), amx_split), want)


def test_amx_split_modes_checked():
    for bad in (-1, 3, 100):
        with pytest.raises(ValueError, match="0 .the rule., 1 .panel pairs. or 2"):
            _C.amx_split_for_tests(bad)
    with pytest.raises(TypeError):
        _C.amx_split_for_tests("pairs")
    _C.amx_split_for_tests(0)


@needs_amx_bf16
@pytest.mark.parametrize("kind", ["fp16", "int8"])
def test_panel_pairs_on_two_threads(kind, amx_split):
    # 40 x 3000 x 300 (36 M multiply-adds): the pairs split between the threads, same bits as one
    rng = np.random.default_rng(12)
    n, k = 300, 3000
    x = rng.standard_normal((40, k)).astype(np.float32)
    if kind == "int8":
        w, packed, m128 = _packed(n, k, rng)
        call = lambda nthreads: _wo(x, packed, n, m128, nthreads=nthreads)  # noqa: E731
    else:
        w, w_arr = _weight(n, k, False, rng)
        call = lambda nthreads: _amx(x, w_arr, False, nthreads=nthreads)  # noqa: E731
    amx_split(1)
    one = call(1)
    before = int(_C.linear_kernels()["split_calls"])
    np.testing.assert_array_equal(call(2), one)
    assert int(_C.linear_kernels()["split_calls"]) > before
    amx_split(2)
    np.testing.assert_array_equal(call(2), one)
