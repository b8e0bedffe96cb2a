"""C quantization kernels: every ISA level vs the scalar reference and vs torch,
on odd shapes, extremes and bad input (which must raise, never crash)."""
import os

import numpy as np
import pytest
import torch

from mono_quant import _C, kernels, reference
from conftest import SUPPORTED, at_isa, torch_per_channel, torch_per_tensor

SHAPES = [(1, 1), (1, 7), (3, 1), (5, 15), (7, 16), (4, 17), (9, 31), (2, 32), (3, 33), (6, 100), (2, 1000), (1, 4099)]
SOURCE_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _data(shape, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype)


def _ties(rows, cols, scale, zp, seed=0):
    """Values landing exactly on (and one ulp around) .5 after x * (1/scale): where rounding rules differ."""
    rng = np.random.default_rng(seed)
    k = rng.integers(-100, 100, size=(rows, cols))
    x = ((k + 0.5) * np.float64(scale)).astype(np.float32)
    x = np.nextafter(x, rng.choice([-np.inf, np.inf], size=x.shape).astype(np.float32))
    return torch.from_numpy(x)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", SOURCE_DTYPES, ids=str)
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_fused_quantize_matches_torch_per_channel(isa, shape, dtype, symmetric):
    x = _data(shape, dtype)
    qmin, qmax = (-127, 127) if symmetric else (-128, 127)
    q, scale, zp, bad, _, _ = kernels.quantize_rows_fused(x, qmin, qmax, symmetric)
    assert bad == -1
    assert torch.equal(q, torch_per_channel(x, scale, zp, 0))
    # scale/zero-point are the reference formula's, bit for bit
    mn, mx, _ = reference.rows_minmax(x)
    rs, rz = reference.choose_qparams(mn, mx, qmin, qmax, symmetric)
    assert torch.equal(scale, rs) and torch.equal(zp, rz)


@pytest.mark.parametrize("dtype", SOURCE_DTYPES, ids=str)
def test_simd_equals_scalar_reference(dtype):
    x = _data((13, 517), dtype, seed=3)
    results = {}
    for level in SUPPORTED:
        with at_isa(level):
            mn, mx, _ = kernels.rows_minmax(x)
            q, s, z, _, sx, se = kernels.quantize_rows_fused(x, -128, 127, False, with_error=True)
            deq = kernels.dequantize_rows(q, s, z)
            qt = kernels.quantize_rows(x, s[:1], z[:1], -128, 127, use_fma=True)
            results[level] = (mn, mx, q, s, z, deq, qt, sx, se)
    base = results["scalar"]
    for level, res in results.items():
        for a, b in zip(base[:7], res[:7]):
            assert torch.equal(a, b), level
        # error sums are float reductions: equal up to summation order
        assert torch.allclose(base[7], res[7], rtol=1e-5) and torch.allclose(base[8], res[8], rtol=1e-4)


@pytest.mark.parametrize("zp", [-3, 0, 7])
def test_near_ties_follow_torch_per_channel_and_per_tensor(isa, zp):
    scale = np.float32(0.0123457)
    x = _ties(8, 515, scale, zp)
    s = torch.full((8,), float(scale))
    z = torch.full((8,), zp, dtype=torch.int32)
    q = kernels.quantize_rows(x, s, z, -128, 127, use_fma=False)
    assert torch.equal(q, torch_per_channel(x, s, z, 0))
    fma = kernels.per_tensor_uses_fma()  # torch's rounding on this CPU (fbgemm: FMA where AVX2)
    qt = kernels.quantize_rows(x, s[:1], z[:1], -128, 127, use_fma=fma)
    assert torch.equal(qt, torch_per_tensor(x, scale, zp))
    if zp != 0 and fma:  # with a zero-point the data does exercise the difference
        assert not torch.equal(q, qt)


def test_uint8_range_matches_torch_quint8(isa):
    x = _data((6, 77), torch.float32, seed=5)
    q, s, z, _, _, _ = kernels.quantize_rows_fused(x, 0, 255, False)
    assert q.dtype == torch.uint8
    assert torch.equal(q, torch_per_channel(x, s, z, 0, torch.quint8))
    qt = kernels.quantize_rows(x, s[:1], z[:1], 0, 255, use_fma=kernels.per_tensor_uses_fma())
    assert torch.equal(qt, torch_per_tensor(x, s[0], z[0], torch.quint8))


def test_extremes_all_zero_constant_and_tiny_rows(isa):
    x = torch.zeros(6, 40)
    x[1] = 5.0  # constant positive
    x[2] = -2.5  # constant negative
    x[3, ::3] = 3.0e38  # huge
    x[3, 1::3] = -3.0e38
    x[4] = torch.linspace(-1e-30, 1e-30, 40)  # tiny: torch's eps floor would zero it
    x[5, 0] = 1.0
    for symmetric, (lo, hi) in [(False, (-128, 127)), (True, (-127, 127))]:
        q, s, z, bad, _, _ = kernels.quantize_rows_fused(x, lo, hi, symmetric)
        assert bad == -1
        assert torch.isfinite(s).all() and (s > 0).all()
        assert ((z >= lo) & (z <= hi)).all()
        assert torch.equal(q, torch_per_channel(x, s, z, 0))
        deq = kernels.dequantize_rows(q, s, z)
        assert torch.equal(deq[0], torch.zeros(40))  # zero stays exactly zero
        assert torch.allclose(deq[1], x[1], rtol=0.01)
        assert torch.allclose(deq[4], x[4], atol=1e-32)  # tiny row keeps its resolution
        assert torch.isfinite(deq).all()


def test_nonfinite_rows_are_reported(isa):
    x = _data((5, 33), torch.float32)
    for value in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[3, 32] = value  # in the scalar tail of the SIMD loop
        y[4, 0] = value
        assert kernels.rows_minmax(y)[2] == 3
        assert kernels.quantize_rows_fused(y, -128, 127, False)[3] == 3
    for dtype in (torch.float16, torch.bfloat16):
        y = x.to(dtype)
        y[2, 5] = float("inf")
        assert kernels.rows_minmax(y)[2] == 2


def test_nan_input_with_given_qparams_maps_to_qmin(isa):
    x = torch.full((1, 40), float("nan"))
    q = kernels.quantize_rows(x, torch.ones(1), torch.zeros(1, dtype=torch.int32), -128, 127)
    assert (q == -128).all()


def test_sqerr_matches_reference(isa):
    x = _data((7, 300), torch.float32, seed=9)
    q, s, z, _, sx, se = kernels.quantize_rows_fused(x, -128, 127, False, with_error=True)
    rx, re = reference.rows_sqerr(x, q, s, z)
    assert torch.allclose(sx, rx, rtol=1e-5) and torch.allclose(se, re, rtol=1e-4)
    tx, te = kernels.rows_sqerr(x, q, s, z)
    assert torch.allclose(tx, rx, rtol=1e-5) and torch.allclose(te, re, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sqerr_sums_are_finite_near_float32s_limit(isa, dtype):
    """Rows of weights past ~1.8e19, whose float32 squares overflow, have finite sums at every
    level, the reference's float64 ones (the SIMD levels returned the inf of their float32
    partial sums, which quantize() measured again in Python)."""
    big = (_data((6, 300), torch.float32, seed=4) * torch.tensor([1e19, 1e20, 1e25, 1e30, 1e36, 1e37])[:, None])
    x = big.to(dtype)
    q, s, z, _, sx, se = kernels.quantize_rows_fused(x, -128, 127, False, with_error=True)
    rx, re = reference.rows_sqerr(x, q, s, z)
    assert bool(torch.isfinite(sx).all() and torch.isfinite(se).all())
    assert torch.allclose(sx, rx, rtol=1e-9) and torch.allclose(se, re, rtol=1e-9)
    tx, te = kernels.rows_sqerr(x, q, s, z)
    assert torch.equal(tx, sx) and torch.equal(te, se)


def test_reference_twins_agree_with_c():
    x = _data((9, 70), torch.float32, seed=2)
    for symmetric in (False, True):
        c = kernels.quantize_rows_fused(x, -127 if symmetric else -128, 127, symmetric)
        r = reference.quantize_rows_fused(x, -127 if symmetric else -128, 127, symmetric)
        for a, b in zip(c[:3], r[:3]):
            assert torch.equal(a, b)
    q, s, z = c[:3]
    assert torch.equal(kernels.dequantize_rows(q, s, z), reference.dequantize_rows(q, s, z))


def test_threads_give_identical_results(monkeypatch):
    x = _data((64, 1500), torch.float32, seed=4)
    monkeypatch.setattr(kernels.SETTINGS, "num_threads", lambda: 1)
    one = kernels.quantize_rows_fused(x, -128, 127, False)
    monkeypatch.setattr(kernels.SETTINGS, "num_threads", lambda: 7)
    many = kernels.quantize_rows_fused(x, -128, 127, False)
    for a, b in zip(one[:3], many[:3]):
        assert torch.equal(a, b)


def test_inputs_are_not_modified():
    x = _data((8, 50), torch.float32)
    before = x.clone()
    q, s, z, _, _, _ = kernels.quantize_rows_fused(x, -128, 127, False, with_error=True)
    kernels.quantize_rows(x, s, z, -128, 127)
    kernels.dequantize_rows(q, s, z)
    assert torch.equal(x, before)


BAD_CALLS = [
    (lambda: _C.rows_minmax([[1.0]]), TypeError),
    (lambda: _C.rows_minmax(np.zeros((2, 2), np.float64)), TypeError),
    (lambda: _C.rows_minmax(np.zeros(4, np.float32)), ValueError),
    (lambda: _C.rows_minmax(np.zeros((2, 2), np.float32), nthreads=0), ValueError),
    (lambda: _C.quantize_rows(np.zeros((2, 2), np.float32), np.ones(3, np.float32), np.zeros(3, np.int32), -128, 127), ValueError),
    (lambda: _C.quantize_rows(np.zeros((2, 2), np.float32), np.zeros(2, np.float32), np.zeros(2, np.int32), -128, 127), ValueError),
    (lambda: _C.quantize_rows(np.zeros((2, 2), np.float32), np.ones(2, np.float32), np.zeros(2, np.int64), -128, 127), TypeError),
    (lambda: _C.quantize_rows(np.zeros((2, 2), np.float32), np.ones(2, np.float32), np.full(2, 300, np.int32), -128, 127), ValueError),
    (lambda: _C.quantize_rows(np.zeros((2, 2), np.float32), np.ones(2, np.float32), np.zeros(2, np.int32), 5, 3), ValueError),
    (lambda: _C.quantize_rows(np.zeros((2, 2), np.float32), np.full(2, np.inf, np.float32), np.zeros(2, np.int32), -128, 127), ValueError),
    (lambda: _C.quantize_rows_fused(np.zeros((2, 2), np.float32), -200, 127, False), ValueError),
    (lambda: _C.dequantize_rows(np.zeros((2, 2), np.float32), np.ones(2, np.float32), np.zeros(2, np.int32)), TypeError),
    (lambda: _C.rows_sqerr(np.zeros((2, 2), np.float32), np.zeros((2, 3), np.int8), np.ones(2, np.float32), np.zeros(2, np.int32)), ValueError),
    (lambda: _C.choose_qparams(np.array([np.nan], np.float32), np.zeros(1, np.float32), -128, 127, False), ValueError),
    (lambda: _C.set_isa("sse9"), ValueError),
    (lambda: _C.set_isa(3), TypeError),
]


@pytest.mark.parametrize("call,exc", BAD_CALLS, ids=range(len(BAD_CALLS)))
def test_bad_arguments_raise_clear_errors(call, exc):
    with pytest.raises(exc):
        call()


def test_non_contiguous_and_empty_inputs():
    x = _data((6, 40), torch.float32)
    strided = x.numpy()[:, ::2]  # non-contiguous numpy view: C makes it contiguous
    q = _C.quantize_rows(strided, np.ones(6, np.float32), np.zeros(6, np.int32), -128, 127)
    assert np.array_equal(q, np.clip(np.rint(strided), -128, 127).astype(np.int8))
    for shape in [(0, 5), (3, 0)]:
        q, s, z, bad, _, _ = _C.quantize_rows_fused(np.zeros(shape, np.float32), -128, 127, False)
        assert q.shape == shape and bad == -1


def test_cpu_info_reports_dispatch():
    info = kernels.cpu_info()
    assert info["best_isa"] in ("scalar", "avx2", "avx512")
    assert info["active_isa"] in ("scalar", "avx2", "avx512")
    assert isinstance(info["avx2"], bool)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.skipif(bool(os.environ.get("MONO_QUANT_SANITIZED")),
                    reason="ASan's quarantine keeps freed memory resident: RSS says nothing under `make sanitize`")
def test_no_reference_leaks_in_the_c_layer():
    x = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    s, z = np.ones(64, np.float32), np.zeros(64, np.int32)

    def calls():
        q, sc, zp, _, sx, se = _C.quantize_rows_fused(x, -128, 127, False, with_error=True)
        _C.quantize_rows(x, sc, zp, -128, 127)
        _C.dequantize_rows(q, sc, zp)
        _C.rows_sqerr(x, q, sc, zp)
        _C.rows_minmax(x)
        _C.choose_qparams(sc, sc, -128, 127, True)
        try:
            _C.quantize_rows(x, s[:3], z[:3], -128, 127)  # error path must release too
        except ValueError:
            pass

    for _ in range(50):
        calls()
    before = _rss_kib()
    for _ in range(2000):
        calls()
    # each round allocates ~100 KiB of arrays; a leak would grow by ~200 MiB
    assert _rss_kib() - before < 20 * 1024


def test_non_native_byte_order_is_refused_not_misread():
    big_endian = np.arange(6, dtype=">f4").reshape(2, 3)
    with pytest.raises(TypeError, match="native byte order"):
        _C.rows_minmax(big_endian)
    unaligned = np.frombuffer(np.zeros(25, np.uint8).tobytes()[1:], dtype=np.float32).reshape(2, 3)
    assert _C.rows_minmax(unaligned)[2] == -1  # an aligned copy is made
