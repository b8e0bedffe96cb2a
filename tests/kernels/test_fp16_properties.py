"""Property tests of ``_C.h16_linear`` (the fp16 / bf16 weight linear), in the manner of
test_properties_c.py: hypothesis draws shapes around the SIMD widths (0 included), weight
encodings (float16, bf16 bits as int16 / uint16), memory layouts, values with specials
(subnormals, extremes, +-Inf, NaN), the kernel level and the thread count.  A valid call
agrees with torch's float64 product of the widened weight to float32 rounding (NaN where
it is NaN); an invalid one raises a clear error."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mono_quant import _C
from conftest import SUPPORTED, at_isa

EDGE = [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 31, 32, 33, 63, 64, 65]
SETTINGS = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ENCODINGS = ["float16", "bf16_int16", "bf16_uint16"]


def sizes(lo, hi):
    return st.one_of(st.sampled_from([s for s in EDGE if lo <= s <= hi]), st.integers(lo, hi))


def values(draw, shape, specials):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    v = (rng.standard_normal(shape) * draw(st.sampled_from([1.0, 1e-3, 30.0, 1e-6]))).astype(np.float32)
    if v.size:
        for _ in range(draw(st.integers(0, 3))):
            v.flat[draw(st.integers(0, v.size - 1))] = draw(st.sampled_from(specials))
    return v


def encode(w, encoding):
    """(array crossing to C, torch float32 weight it stands for, bf16 flag)"""
    if encoding == "float16":
        a = w.astype(np.float16)
        return a, torch.from_numpy(a.astype(np.float32)), False
    bits = torch.from_numpy(w).to(torch.bfloat16)
    a = bits.view(torch.int16).numpy()
    return (a if encoding == "bf16_int16" else a.view(np.uint16)), bits.float(), True


def layout(a, name):
    if name == "fortran":
        return np.asfortranarray(a)
    if name == "col_slice":
        return np.repeat(a, 2, axis=1)[:, ::2]
    if name == "row_slice":
        return np.repeat(a, 2, axis=0)[::2]
    return a


@SETTINGS
@given(data=st.data(), m=sizes(0, 40), k=sizes(0, 70), n=sizes(0, 40), encoding=st.sampled_from(ENCODINGS),
       isa=st.sampled_from(SUPPORTED), nthreads=st.sampled_from([1, 2, 3]))
def test_h16_linear_matches_the_widened_product(data, m, k, n, encoding, isa, nthreads):
    x = values(data.draw, (m, k), [0.0, -0.0, 1e-40, 3e4, np.inf, np.nan])
    w_bits, w, is_bf16 = encode(values(data.draw, (n, k), [0.0, -0.0, 6e-8, 1e-5, 6e4, -np.inf, np.nan]), encoding)
    bias = values(data.draw, (n,), [0.0, np.inf]) if data.draw(st.booleans()) else None
    xa = layout(x, data.draw(st.sampled_from(["contiguous", "fortran", "col_slice", "row_slice"])))
    wa = layout(w_bits, data.draw(st.sampled_from(["contiguous", "fortran", "col_slice"])))
    with at_isa(isa):
        y = _C.h16_linear(xa, wa, is_bf16, bias=bias, nthreads=nthreads)
    assert y.shape == (m, n) and y.dtype == np.float32
    xd = torch.from_numpy(x).double()
    exact = xd @ w.double().T + (0.0 if bias is None else torch.from_numpy(bias).double())
    got = torch.from_numpy(y).double()
    # no partial sum can overflow float32 at these magnitudes, so NaN and +-Inf land where they do in float64
    assert torch.equal(torch.isnan(got), torch.isnan(exact))
    inf = torch.isinf(exact)
    assert torch.equal(got[inf], exact[inf])
    fine = torch.isfinite(exact)
    mag = xd.abs() @ w.double().abs().T + (0.0 if bias is None else torch.from_numpy(bias).double().abs())
    bound = (k + 2) * 2.0 ** -24 * mag
    assert bool(((got - exact).abs()[fine] <= bound[fine]).all())


@SETTINGS
@given(data=st.data())
def test_h16_linear_rejects_bad_arguments_clearly(data):
    k = data.draw(st.integers(1, 9))
    x = np.zeros((2, k), np.float32)
    w = np.zeros((3, k), np.float16)
    bad = data.draw(st.sampled_from(["x64", "x1d", "wf32", "w3d", "kmismatch", "bias_len", "bias_f64", "bf16_f16",
                                     "big_endian", "threads", "not_array"]))
    calls = {
        "x64": lambda: _C.h16_linear(x.astype(np.float64), w, False),
        "x1d": lambda: _C.h16_linear(x[0], w, False),
        "wf32": lambda: _C.h16_linear(x, w.astype(np.float32), False),
        "w3d": lambda: _C.h16_linear(x, w[None], False),
        "kmismatch": lambda: _C.h16_linear(x, np.zeros((3, k + 1), np.float16), False),
        "bias_len": lambda: _C.h16_linear(x, w, False, bias=np.zeros(4, np.float32)),
        "bias_f64": lambda: _C.h16_linear(x, w, False, bias=np.zeros(3)),
        "bf16_f16": lambda: _C.h16_linear(x, w, True),
        "big_endian": lambda: _C.h16_linear(x.astype(">f4"), w, False),
        "threads": lambda: _C.h16_linear(x, w, False, nthreads=data.draw(st.sampled_from([0, -1, 5000]))),
        "not_array": lambda: _C.h16_linear(x.tolist(), w, False),
    }
    with pytest.raises((TypeError, ValueError)) as info:
        calls[bad]()
    assert str(info.value)
