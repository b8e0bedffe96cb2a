"""Property tests over every entry point of ``mono_quant._C`` (issue 14).

Hypothesis draws shapes (0, 1, SIMD tails, huge-but-cheap), strides and
layouts (row and column slices, Fortran order, broadcast rows), dtypes
(float32, float16, bf16 bits as int16/uint16), big-endian arrays, NaN/Inf,
extreme magnitudes, bad arguments, the kernel level and the thread count.
Each call is checked against its pure-torch twin (``reference.py``,
``int4.unpack_int4``, the packed layout written out in numpy): a valid call
agrees with it, an invalid one raises a clear Python error (a message, one of
``CLEAR_ERRORS``).  A crash of the interpreter fails the run, which is the
point of running this file under ``make sanitize`` too.

Profiles: "ci" (the default: a bounded number of examples, the whole file in
well under 30 s on two cores) and "long" (``MONO_QUANT_FUZZ_LONG=1``, by hand:
3000 examples per entry point, or ``MONO_QUANT_FUZZ_LONG=<n>`` for n).
"""
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mono_quant import _C, reference
from mono_quant.kernels.reference import dequantize_packed_int8
from mono_quant.int4 import unpack_int4
from conftest import LEVELS, SUPPORTED, at_isa

# CI: the same examples every run (derandomized), so a merge is never refused by the luck of a draw;
# the long mode (MONO_QUANT_FUZZ_LONG) draws fresh ones; a failure prints the blob that replays it
settings.register_profile("ci", max_examples=25, deadline=None, database=None, print_blob=True, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=3000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_LONG = os.environ.get("MONO_QUANT_FUZZ_LONG", "")
if _LONG.isdigit() and int(_LONG) > 1:  # MONO_QUANT_FUZZ_LONG=<examples per entry point>
    settings.register_profile("long", settings.get_profile("long"), max_examples=int(_LONG))
PROFILE = settings.get_profile("long" if _LONG else "ci")

# casts to float16 overflow and zero scales divide on purpose
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

CLEAR_ERRORS = (TypeError, ValueError, OverflowError, MemoryError)

# Every public entry point in the binding files' method tables (csrc/bind_*.c): a new one must get a property here.
ENTRY_POINTS = {
    "rows_minmax", "choose_qparams", "quantize_rows", "quantize_rows_fused", "dequantize_rows", "rows_sqerr",
    "quantize_activations", "pack_int8", "quantize_pack_int8", "packed_check", "quantize_pack_int8_file", "linear_int8", "conv2d_int8",
    "packed_dequantize",
    "linear_kernels", "set_threading_backend", "set_gemv_max_rows", "use_vnni256_for_tests",
    "use_maddubs_for_tests", "team_backoff_for_tests", "team_min_work_for_tests", "amx_split_for_tests",
    "dconv_own_panels_for_tests",
    "cpu_info", "set_isa", "use_amx",
    "get_isa", "q4_quantize", "q4_dequantize", "q4_linear", "q4_panel_min_m", "q4_int8_min_m",
    # calibration observers: properties in tests/kernels/test_properties_observers.py
    "obs_minmax", "obs_hist_update", "obs_entropy_search", "obs_mse_search",
    # static int8: properties in tests/test_properties_static.py
    "quantize_static", "dequantize_static", "conv2d_static", "depthwise_static", "add_static", "avgpool_static",
    # the float images' transpose: tests/kernels/test_transpose_f32.py
    "transpose_f32",
    # fp16 / bf16 weight linear: properties in tests/kernels/test_fp16_properties.py
    "h16_linear",
    # uint8 weight-only linear: twins, thread splits and argument checks in tests/kernels/test_uint8_linear.py
    "u8_linear",
    # fp16 / bf16 weight Conv2d: properties in tests/kernels/test_half_conv_properties.py
    "h16_conv2d",
    "static_program", "static_program_run",
    # the layers' cache check: properties in tests/kernels/test_stamps.py
    "tensors_unchanged",
    # the prepared dynamic int8 call: properties in tests/kernels/test_linear_prepared.py
    "linear_int8_prepare", "linear_int8_prepared",
    # the split kernel's switch and the split itself: tests/kernels/test_split_rows.py
    "set_split_rows", "act_split",
    # the direct conv split's correction step: tests/nn/test_dynamic_conv_split.py (twin and argument checks)
    "dconv_split_spread",
    # the dynamic conv's route switch, route rule and profile: properties in tests/nn/test_dynamic_conv_direct.py
    "set_conv_direct", "conv2d_int8_direct_applies", "conv_profile",
    # the direct conv on panels: properties in tests/kernels/test_direct_conv_panels.py
    "dconv_panels_int8", "dconv_panels", "dconv2d", "dconv2d_int8", "dconv2d_int4",
    # quantized embedding tables: twins, a property and argument checks in tests/kernels/test_embedding_kernels.py
    "embedding_rows", "embedding_bag",
    # the float32 depthwise conv: a property, odd shapes and argument checks in tests/kernels/test_float_depthwise.py
    "depthwise_conv2d",
}


def test_every_entry_point_has_a_property():
    exported = {name for name in dir(_C) if callable(getattr(_C, name)) and not name.startswith("_")}
    assert exported == ENTRY_POINTS


def raises_clearly(call, errors=CLEAR_ERRORS):
    """The call raises one of ``errors`` with a message (never a crash, never a silent result)."""
    with pytest.raises(errors) as info:
        call()
    assert str(info.value), f"{type(info.value).__name__} without a message"
    return info.value


# ---- strategies ---------------------------------------------------------------------------------

# Sizes around the SIMD widths (4, 8, 16, 32, 64 lanes / bytes) and a few plain ones
EDGE_SIZES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129]


def sizes(lo=0, hi=200):
    return st.one_of(st.sampled_from([s for s in EDGE_SIZES if lo <= s <= hi]), st.integers(lo, hi))


ISAS = st.sampled_from(SUPPORTED)
THREADS = st.sampled_from([1, 1, 2, 3, 4])
SOURCE_DTYPES = ["float32", "float16", "bf16_int16", "bf16_uint16"]
LAYOUTS = ["contiguous", "fortran", "row_slice", "col_slice", "broadcast_rows", "reversed_rows", "unaligned",
           "big_endian"]
MAGNITUDES = [1.0, 1.0, 0.05, 1e-3, 100.0, 1e-30, 1e30, 1e-40, 60000.0]


@st.composite
def float_values(draw, rows, cols, nonfinite=True):
    """A float32 [rows, cols] array: gaussian times a magnitude, with a few drawn specials
    (0, +-Inf, NaN, extremes) at drawn places and sometimes a constant or all-zero row."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (rng.standard_normal((rows, cols)) * draw(st.sampled_from(MAGNITUDES))).astype(np.float32)
    if draw(st.booleans()):
        x += np.float32(draw(st.sampled_from([0.3, -5.0, 1e3])))  # off-centre: asymmetric ranges
    if rows and cols:
        specials = [0.0, -0.0, 3.4e38, -3.4e38, 1e-45, 65504.0]
        if nonfinite:
            specials += [np.inf, -np.inf, np.nan]
        for _ in range(draw(st.integers(0, 3))):
            x[draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))] = draw(st.sampled_from(specials))
        if draw(st.booleans()):
            x[draw(st.integers(0, rows - 1))] = draw(st.sampled_from([0.0, 2.5, -1e-3]))
    return x


def as_dtype(x, dtype):
    """float32 values in a source dtype (bf16 as its int16 / uint16 bits)."""
    if dtype == "float32":
        return x
    if dtype == "float16":
        return x.astype(np.float16)
    bits = torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).view(torch.int16).numpy()
    return bits if dtype == "bf16_int16" else bits.view(np.uint16)


def to_torch(a):
    """The tensor a source array stands for (int16 / uint16 are bf16 bits)."""
    a = np.ascontiguousarray(a)
    if a.dtype in (np.int16, np.uint16):
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def with_layout(a, layout):
    """The same logical array in another memory layout (or byte order)."""
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "row_slice":  # every other row of a twice-as-tall array
        big = np.repeat(a, 2, axis=0)
        return big[::2]
    if layout == "col_slice":
        big = np.repeat(a, 2, axis=1)
        return big[:, ::2]
    if layout == "broadcast_rows" and a.shape[0] > 0:  # every row the first: stride 0
        return np.broadcast_to(a[:1], a.shape)
    if layout == "reversed_rows":  # a negative row stride
        return np.ascontiguousarray(a[::-1])[::-1]
    if layout == "unaligned" and a.dtype.itemsize > 1:  # data one byte past an aligned address
        buffer = np.empty(a.nbytes + a.dtype.itemsize, np.uint8)
        view = buffer[1:1 + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        assert not view.flags.aligned or a.size == 0
        return view
    if layout == "big_endian":
        return a.astype(a.dtype.newbyteorder(">"))
    return a


@st.composite
def source_arrays(draw, rows=None, cols=None, nonfinite=True, layouts=LAYOUTS, dtypes=SOURCE_DTYPES):
    """(array for the C call, its logical values as a torch tensor, layout name)."""
    rows = draw(sizes(0, 40)) if rows is None else rows
    cols = draw(sizes(0, 300)) if cols is None else cols
    dtype = draw(st.sampled_from(dtypes))
    layout = draw(st.sampled_from(layouts))
    base = as_dtype(draw(float_values(rows, cols, nonfinite)), dtype)
    a = with_layout(base, layout)
    return a, to_torch(np.asarray(a, dtype=a.dtype.newbyteorder("="))), layout


def assert_same(c, twin, what=""):
    """Bit-equal arrays (NaN equal to NaN)."""
    c, twin = np.asarray(c), twin.numpy() if isinstance(twin, torch.Tensor) else np.asarray(twin)
    assert c.shape == twin.shape, (what, c.shape, twin.shape)
    np.testing.assert_array_equal(c, twin, err_msg=what)


# ---- row kernels (quant.c) -------------------------------------------------------------------------


@PROFILE
@given(source_arrays(), ISAS, THREADS)
def test_rows_minmax(src, isa, nthreads):
    a, x, layout = src
    if layout == "big_endian":
        raises_clearly(lambda: _C.rows_minmax(a))
        return
    with at_isa(isa):
        mn, mx, bad = _C.rows_minmax(a, nthreads=nthreads)
    want_mn, want_mx, want_bad = reference.rows_minmax(x)
    assert bad == want_bad
    assert_same(mn, want_mn, "min")
    assert_same(mx, want_mx, "max")


QRANGES = st.sampled_from([(-128, 127), (0, 255), (-127, 127), (-8, 7), (0, 15), (-1, 0)])
BAD_QRANGES = st.sampled_from([(0, 0), (5, 4), (-129, 127), (0, 256), (-1, 200), (-2**31, 2**31 - 1),
                               (-127, -1), (1, 127), (10, 20), (-128, 0)])  # (without 0; symmetric without positives)


def valid_qrange(qmin: int, qmax: int, symmetric: bool = False) -> bool:
    """csrc/bind_args.c mq_check_qrange: int8 or uint8, holding 0 (torch's rule); symmetric signed codes
    (zero-point 0) also past 0 on the positive side (mq_check_symmetric_qrange)."""
    fits = (-128 <= qmin and qmax <= 127) or (0 <= qmin and qmax <= 255)
    return qmin < qmax and qmin <= 0 <= qmax and fits and not (symmetric and qmin < 0 and qmax <= 0)


@PROFILE
@given(st.integers(0, 64), st.data(), QRANGES | BAD_QRANGES, st.booleans())
def test_choose_qparams(n, data, qrange, symmetric):
    qmin, qmax = qrange
    mn = data.draw(float_values(1, n))[0]
    mx = data.draw(float_values(1, n))[0]
    if data.draw(st.integers(0, 4)) > 0:  # mostly real ranges (min <= max); else min > max somewhere, refused
        with np.errstate(invalid="ignore"):
            mn, mx = np.fmin(mn, mx), np.fmax(mn, mx)
    valid_range = valid_qrange(qmin, qmax, symmetric)
    if not valid_range or not (np.isfinite(mn).all() and np.isfinite(mx).all()) or (mn > mx).any():
        raises_clearly(lambda: _C.choose_qparams(mn, mx, qmin, qmax, symmetric))  # (min > max: no range)
        return
    s, z = _C.choose_qparams(mn, mx, qmin, qmax, symmetric)
    want_s, want_z = reference.choose_qparams(torch.from_numpy(mn), torch.from_numpy(mx), qmin, qmax, symmetric)
    assert_same(s, want_s, "scale")
    assert_same(z, want_z, "zero_point")


@st.composite
def qparams(draw, rows, qmin, qmax):
    """(scale, zero_point, scale_ok, zero_point_ok): per row or per tensor, sometimes of the wrong
    length, a scale not positive and finite with a finite inverse, a zero-point outside [qmin, qmax]."""
    n = draw(st.sampled_from([rows, 1] if rows != 1 else [1]))
    if draw(st.integers(0, 9)) == 0:
        n = draw(st.sampled_from([0, rows + 1, 2]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = (rng.random(n) * draw(st.sampled_from([1.0, 1e-3, 1e-30, 1e30])) + 1e-37).astype(np.float32)
    zp = rng.integers(qmin, qmax + 1, n).astype(np.int32)
    if n and draw(st.integers(0, 5)) == 0:
        scale[draw(st.integers(0, n - 1))] = draw(st.sampled_from([0.0, -1.0, np.nan, np.inf, 1e-45]))
    if n and draw(st.integers(0, 5)) == 0:
        zp[draw(st.integers(0, n - 1))] = draw(st.sampled_from([qmin - 1, qmax + 1, -2**31]))
    inv = np.float32(1.0) / scale if n else scale
    scale_ok = (n == rows or n == 1) and bool(np.all(scale > 0) and np.isfinite(scale).all()
                                              and np.isfinite(inv).all())
    return scale, zp, scale_ok, bool(np.all((zp >= qmin) & (zp <= qmax)))


@PROFILE
@given(source_arrays(), QRANGES, st.booleans(), st.data(), ISAS, THREADS)
def test_quantize_rows(src, qrange, use_fma, data, isa, nthreads):
    a, x, layout = src
    qmin, qmax = qrange
    scale, zp, scale_ok, zp_ok = data.draw(qparams(x.shape[0], qmin, qmax))
    valid = scale_ok and zp_ok  # (quantizing needs the zero-point in range; dequantizing takes any)
    call = lambda: _C.quantize_rows(a, scale, zp, qmin, qmax, use_fma=use_fma, nthreads=nthreads)  # noqa: E731
    if layout == "big_endian" or not valid:
        raises_clearly(call)
        return
    with at_isa(isa):
        q = call()
    want = reference.quantize_rows(x, torch.from_numpy(scale), torch.from_numpy(zp), qmin, qmax, use_fma)
    finite = torch.isfinite(x.float()).numpy()
    assert_same(np.where(finite, q, 0), np.where(finite, want.numpy(), 0), "q")


@PROFILE
@given(source_arrays(), QRANGES | BAD_QRANGES, st.booleans(), st.booleans(), ISAS, THREADS)
def test_quantize_rows_fused(src, qrange, symmetric, with_error, isa, nthreads):
    a, x, layout = src
    qmin, qmax = qrange
    valid_range = valid_qrange(qmin, qmax, symmetric)
    call = lambda: _C.quantize_rows_fused(a, qmin, qmax, symmetric, with_error=with_error,  # noqa: E731
                                          nthreads=nthreads)
    if layout == "big_endian" or not valid_range:
        raises_clearly(call)
        return
    with at_isa(isa):
        q, s, z, bad, sx, se = call()
    wq, ws, wz, wbad, wsx, wse = reference.quantize_rows_fused(x, qmin, qmax, symmetric, with_error)
    assert bad == wbad
    good = torch.isfinite(x.float()).all(dim=1).numpy()
    assert_same(q[good], wq.numpy()[good], "q")
    assert_same(s[good], ws.numpy()[good], "scale")  # (a row holding NaN/Inf: undefined output)
    assert_same(z[good], wz.numpy()[good], "zero_point")
    if with_error:
        assert_sums_close(sx, se, wsx, wse, good)
    else:
        assert sx is None and se is None


@PROFILE
@given(source_arrays(), st.booleans(), st.integers(-1, 3), st.integers(-2, 70), ISAS)
def test_quantize_activations(src, reduce_range, encoding, extra, isa):
    """Every level's activation rows equal the scalar twin's (tests/kernels/test_act_rows.py
    checks that one against torch); bad encodings and paddings raise."""
    a, x, layout = src
    cols = a.shape[1] if a.ndim == 2 else 0
    kp = cols + extra if extra >= 0 else 0 if extra == -1 else cols + 65  # 0: cols; cols + 65: too wide
    call = lambda: _C.quantize_activations(a, reduce_range, encoding, kp)  # noqa: E731
    if layout == "big_endian" or not 0 <= encoding <= (2 if reduce_range else 1) or extra == -2 or extra > 64:
        raises_clearly(call)
        return
    with at_isa("scalar"):
        want = call()
    with at_isa(isa):
        got = call()
    assert_same(got[0], want[0], "q")
    assert_same(got[1], want[1], "scale")
    assert (got[2] is None) == (not reduce_range)
    if reduce_range:
        assert_same(got[2], want[2], "zero_point")
    assert_same(got[3], want[3], "sum")


@st.composite
def int8_codes(draw, rows=None, cols=None, signed=None):
    """A 2-D int8 / uint8 array in a drawn layout, with the extremes present."""
    rows = draw(sizes(0, 40)) if rows is None else rows
    cols = draw(sizes(0, 200)) if cols is None else cols
    signed = draw(st.booleans()) if signed is None else signed
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = np.int8 if signed else np.uint8
    info = np.iinfo(dtype)
    q = rng.integers(info.min, info.max + 1, (rows, cols)).astype(dtype)
    if rows and cols and draw(st.booleans()):
        q[0, 0] = info.min
    layout = draw(st.sampled_from(["contiguous", "fortran", "row_slice", "col_slice", "broadcast_rows",
                                   "reversed_rows"]))
    a = with_layout(q, layout)
    return a, np.array(a)  # (the C call's array, its logical values)


@PROFILE
@given(int8_codes(), st.data(), THREADS)
def test_dequantize_rows(codes, data, nthreads):
    a, q = codes
    qmin, qmax = (-128, 127) if q.dtype == np.int8 else (0, 255)
    scale, zp, scale_ok, _ = data.draw(qparams(q.shape[0], qmin, qmax))
    if not scale_ok:
        raises_clearly(lambda: _C.dequantize_rows(a, scale, zp, nthreads=nthreads))
        return
    out = _C.dequantize_rows(a, scale, zp, nthreads=nthreads)
    assert_same(out, reference.dequantize_rows(torch.from_numpy(q), torch.from_numpy(scale), torch.from_numpy(zp)))


@PROFILE
@given(st.data(), THREADS)
def test_rows_sqerr(data, nthreads):
    a, x, layout = data.draw(source_arrays(layouts=["contiguous", "row_slice", "col_slice", "big_endian"]))
    rows, cols = x.shape
    if data.draw(st.integers(0, 7)) == 0:
        cols += 1  # q of another shape
    codes, q = data.draw(int8_codes(rows, cols))
    qmin, qmax = (-128, 127) if q.dtype == np.int8 else (0, 255)
    scale, zp, scale_ok, _ = data.draw(qparams(rows, qmin, qmax))
    call = lambda: _C.rows_sqerr(a, codes, scale, zp, nthreads=nthreads)  # noqa: E731
    if layout == "big_endian" or not scale_ok or q.shape != tuple(x.shape):
        raises_clearly(call)
        return
    sx, se = call()
    tq, ts, tz = torch.from_numpy(q), torch.from_numpy(scale), torch.from_numpy(zp)
    wsx, wse = reference.rows_sqerr(x, tq, ts, tz)
    assert_sums_close(sx, se, wsx, wse, torch.isfinite(x.float()).all(dim=1).numpy())


def assert_sums_close(sx, se, wsx, wse, finite):
    """The C sums of squares against the float64 twin, on the rows of finite values (``finite``).
    The SIMD levels square and add in fp32 (flushed to float64 every 512 / 1024 values; the
    scalar level is float64 all along) and sum a row whose fp32 squares overflow (values or
    errors past ~1.8e19) again in float64: no finite row is left out (rows past 1e18 were,
    while their sums were inf)."""
    np.testing.assert_allclose(sx[finite], wsx.numpy()[finite], rtol=1e-4, atol=1e-30)
    np.testing.assert_allclose(se[finite], wse.numpy()[finite], rtol=1e-4, atol=1e-30)


# ---- int8 packing (linear.c, quantize_pack.c) ----------------------------------------------------------


def padded_rows(packed, n, k):
    """The packed layout written out: [round_up(n,16), round_up(k,4)] (docs/formats.md)."""
    np_, kp = -(-n // 16) * 16, -(-k // 4) * 4
    return np.asarray(packed).reshape(np_ // 16, kp // 4, 16, 4).transpose(0, 2, 1, 3).reshape(np_, kp)


def padded(w):
    n, k = w.shape
    out = np.zeros((-(-n // 16) * 16, -(-k // 4) * 4), w.dtype)
    out[:n, :k] = w
    return out


@PROFILE
@given(int8_codes(signed=True), st.sampled_from(["none", "fresh", "wrong"]), ISAS, THREADS)
def test_pack_int8(codes, out_kind, isa, nthreads):
    a, w = codes
    n, k = w.shape
    np_, kp = -(-n // 16) * 16, -(-k // 4) * 4
    out = None
    if out_kind == "fresh":
        out = (np.full(np_ * kp, 7, np.int8), np.full(np_, 7, np.int32))
    elif out_kind == "wrong":
        out = (np.zeros(np_ * kp + 1, np.int8), np.zeros(np_, np.int32))
        raises_clearly(lambda: _C.pack_int8(a, nthreads=nthreads, out=out))
        return
    with at_isa(isa):
        packed, w_sum, has_m128 = _C.pack_int8(a, nthreads=nthreads, out=out)
    if out is not None:
        assert packed is out[0] and w_sum is out[1]
    assert_same(padded_rows(packed, n, k), padded(w), "packed")
    assert_same(w_sum, padded(w).astype(np.int32).sum(axis=1, dtype=np.int32), "column sums")
    assert has_m128 == bool((w == -128).any())


SIGNED_QRANGES = st.sampled_from([(-128, 127), (-127, 127), (-8, 7)])


@PROFILE
@given(st.data(), SIGNED_QRANGES | st.sampled_from([(0, 255), (0, 127), (5, 4), (-127, -1), (-128, 0)]),
       st.booleans(), st.booleans(),
       ISAS, THREADS)
def test_quantize_pack_int8(data, qrange, symmetric, with_error, isa, nthreads):
    a, x, layout = data.draw(source_arrays(rows=data.draw(sizes(0, 40)), cols=data.draw(sizes(0, 150))))
    qmin, qmax = qrange
    n, k = x.shape
    call = lambda: _C.quantize_pack_int8(a, qmin, qmax, symmetric, with_error=with_error,  # noqa: E731
                                         nthreads=nthreads)
    if layout == "big_endian" or not valid_qrange(qmin, qmax, symmetric) or qmin >= 0 or n == 0 or k == 0:
        raises_clearly(call)
        return
    with at_isa(isa):
        packed, w_sum, s, z, has_m128, bad, sx, se = call()
    wq, ws, wz, wbad, _, _ = reference.quantize_rows_fused(x, qmin, qmax, symmetric)
    assert bad == wbad
    good = torch.isfinite(x.float()).all(dim=1).numpy()
    q = np.where(good[:, None], wq.numpy(), 0).astype(np.int8)  # a NaN/Inf channel is packed as zeros
    assert_same(padded_rows(packed, n, k), padded(q), "packed")
    assert_same(w_sum, padded(q).astype(np.int32).sum(axis=1, dtype=np.int32), "column sums")
    assert has_m128 == bool((q == -128).any())
    assert_same(s[good], ws.numpy()[good], "scale")
    assert_same(z[good], wz.numpy()[good], "zero_point")
    assert (sx is None) == (not with_error)


@PROFILE
@given(st.data(), st.sampled_from(["valid", "short", "long"]), THREADS)
def test_packed_check(data, size_kind, nthreads):
    n = data.draw(st.one_of(sizes(1, 40), st.sampled_from([0, -1, 2**31, 2**40, 2**63 - 1])))
    k = data.draw(st.one_of(sizes(1, 100), st.sampled_from([0, -5, 2**31, 2**62])))
    if not (1 <= n < 2**31 and 1 <= k < 2**31):
        raises_clearly(lambda: _C.packed_check(np.zeros(64, np.int8), n, k))
        return
    size = -(-n // 16) * 16 * (-(-k // 4) * 4) + {"valid": 0, "short": -1, "long": 4}[size_kind]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    packed = rng.integers(-128, 128, size).astype(np.int8)
    if size_kind != "valid":
        raises_clearly(lambda: _C.packed_check(packed, n, k, nthreads=nthreads))
        return
    if data.draw(st.booleans()):  # mostly zero padding, as a real file has
        layout = padded_rows(packed, n, k)
        layout[n:] = 0
        layout[:, k:] = 0
        packed = np.ascontiguousarray(layout.reshape(-1, 16, layout.shape[1] // 4, 4).transpose(0, 2, 1, 3)).ravel()
    sums, has_m128, padding_nonzero = _C.packed_check(packed, n, k, nthreads=nthreads)
    rows = padded_rows(packed, n, k)
    assert_same(sums, rows.astype(np.int64).sum(axis=1).astype(np.int32), "sums")
    assert has_m128 == bool((packed == -128).any())
    assert padding_nonzero == bool(rows[n:].any() or rows[:, k:].any())


@PROFILE
@given(st.data(), st.sampled_from(["valid", "valid", "valid", "short", "bad_taps", "out", "bad_out"]), THREADS)
def test_packed_dequantize(data, case, nthreads):
    groups, out_g, cin = data.draw(st.integers(1, 3)), data.draw(sizes(1, 40)), data.draw(sizes(1, 40))
    taps = data.draw(st.sampled_from([1, 1, 2, 3, 4, 9, 17, 25, 32, 128]))  # (32 x 16 or 32 channels: K of 512, 1024)
    n, k = groups * out_g, cin * taps
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    size = groups * -(-out_g // 16) * 16 * (-(-k // 4) * 4) - (case == "short")
    packed = rng.integers(-128, 128, size).astype(np.int8)  # (padding bytes too: never read into the result)
    per_row = data.draw(st.booleans())
    magnitude = data.draw(st.sampled_from([m for m in MAGNITUDES if 1e-30 <= m <= 1e30]))  # (scales must invert)
    scale = ((rng.random(n if per_row else 1) + 0.01) * magnitude).astype(np.float32)
    zp = rng.integers(-128, 128, n if per_row else 1).astype(np.int32)
    if case == "bad_taps":  # (where taps + 1 divides k too, a valid call of other taps)
        taps += 1
    call = lambda **kw: _C.packed_dequantize(packed, groups, out_g, k, taps, scale, zp, nthreads=nthreads, **kw)  # noqa: E731
    if case == "short" or k % taps:
        raises_clearly(call)
        return
    out = None
    if case == "bad_out":
        raises_clearly(lambda: call(out=np.zeros((n, k + 1), np.float32)))
        return
    if case == "out":
        out = np.full((n, k), np.nan, np.float32)
        got = call(out=out)
        assert got is out
    else:
        got = call()
    twin = dequantize_packed_int8(torch.from_numpy(packed), groups, out_g, k, taps, torch.from_numpy(scale),
                                  torch.from_numpy(zp))
    assert_same(got, twin, "floats")


FILE_DTYPES = {"float32": "float32", "float16": "float16", "bf16_int16": "bfloat16"}


@PROFILE
@given(st.data(), st.sampled_from(sorted(FILE_DTYPES)), st.integers(0, 100), st.booleans(),
       st.sampled_from(["exact", "truncated", "bad_fd", "bad_offset", "bad_dtype"]), THREADS)
def test_quantize_pack_int8_file(data, dtype, offset, symmetric, kind, nthreads):
    a, x, _ = data.draw(source_arrays(rows=data.draw(sizes(1, 40)), cols=data.draw(sizes(1, 150)),
                                      layouts=["contiguous"], dtypes=[dtype]))
    rows, cols = x.shape
    payload = bytes(offset) + a.tobytes()
    if kind == "truncated":
        payload = payload[: data.draw(st.integers(0, len(payload) - 1))]
    with tempfile.TemporaryFile() as f:
        f.write(payload)
        f.flush()
        fd = f.fileno()
        name = FILE_DTYPES[dtype]

        def call(fd=fd, offset=offset, name=name):
            return _C.quantize_pack_int8_file(fd, offset, rows, cols, name, -128, 127, symmetric, nthreads=nthreads)

        if kind == "truncated":
            raises_clearly(call)
        elif kind == "bad_fd":
            raises_clearly(lambda: call(fd=data.draw(st.sampled_from([-1, 10**6]))), CLEAR_ERRORS + (OSError,))
        elif kind == "bad_offset":
            raises_clearly(lambda: call(offset=data.draw(st.sampled_from([-1, 2**62, 2**63 - 1]))))
        elif kind == "bad_dtype":
            raises_clearly(lambda: call(name=data.draw(st.sampled_from(["int8", "", "float64", "bf16"]))))
        else:
            got = call()
            want = _C.quantize_pack_int8(a, -128, 127, symmetric, nthreads=nthreads)
            for g, w in zip(got[:4], want[:4]):
                assert_same(g, w)
            assert got[4:6] == want[4:6]


# ---- int8 matmul (linear.c) -------------------------------------------------------------------------------


@st.composite
def int8_weights(draw, n, k):
    """(int8 weight [n, k], scale float32 [n], zero_point int32 [n], bias or None)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    scale = (rng.random(n).astype(np.float32) * draw(st.sampled_from([1e-2, 1.0, 1e-6])) + np.float32(1e-8))
    zp_kind = draw(st.sampled_from(["zero", "zero", "some", "extreme"]))
    zp = np.zeros(n, np.int32)
    if zp_kind == "some":
        zp = rng.integers(-128, 128, n).astype(np.int32)
    elif zp_kind == "extreme":
        zp[:] = draw(st.sampled_from([-128, 127]))
    bias = rng.standard_normal(n).astype(np.float32) if draw(st.booleans()) else None
    return w, scale, zp, bias


def pack(w, groups=1):
    parts = [_C.pack_int8(np.ascontiguousarray(c)) for c in np.split(w, groups)]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), any(p[2] for p in parts))


@PROFILE
@given(st.data(), st.sampled_from(["dynamic", "weight_only", "int8_acc"]), ISAS, THREADS)
def test_linear_int8(data, mode, isa, nthreads):
    m, n, k = data.draw(sizes(0, 20)), data.draw(sizes(1, 40)), data.draw(sizes(1, 200))
    w, scale, zp, bias = data.draw(int8_weights(n, k))
    packed, w_sum, has_m128 = pack(w)
    if mode == "int8_acc":
        a, q = data.draw(int8_codes(m, k, signed=True))
        x = torch.from_numpy(q)
        bias = None
    else:
        a, x, layout = data.draw(source_arrays(rows=m, cols=k))
        if layout == "big_endian":
            raises_clearly(lambda: _C.linear_int8(a, packed, w_sum, scale, zp, bias, n, has_m128, mode=mode))
            return
    with at_isa(isa):
        y = _C.linear_int8(a, packed, w_sum, scale, zp, bias, n, has_m128, mode=mode, nthreads=nthreads)
    tw = torch.from_numpy(w)
    tb = None if bias is None else torch.from_numpy(bias)
    want = reference.linear_int8(x.float() if mode != "int8_acc" else x, tw, torch.from_numpy(scale),
                                 torch.from_numpy(zp), tb, mode=mode)
    if mode != "weight_only":
        assert_same(y, want, mode)  # integer accumulation, one fixed fp32 epilogue: bit for bit
        return
    wd = (tw.double() - torch.from_numpy(zp).double()[:, None]) * torch.from_numpy(scale).double()[:, None]
    exact = x.double() @ wd.T + (0 if tb is None else tb.double())
    magnitude = x.double().abs().nan_to_num(0, 0, 0) @ wd.abs().T + (0 if tb is None else tb.double().abs())
    # fp32 sums of k products: within k ulps of the sum of magnitudes, where nothing overflows fp32
    good = (x.double().abs() < 1e30).all(dim=1, keepdim=True) & (magnitude < 1e37)
    diff = (torch.from_numpy(y).double() - exact).abs()
    assert bool((diff[good] <= (magnitude * (k + 2) * 2.0**-23 + 1e-37)[good]).all())
    nonfinite_rows = ~torch.isfinite(x.float()).all(dim=1)
    assert not torch.isfinite(torch.from_numpy(y)[nonfinite_rows]).all(dim=1).any()  # NaN/Inf in, never a number


@PROFILE
@given(st.data())
def test_linear_int8_bad_arguments(data):
    n, k = data.draw(sizes(1, 40)), data.draw(sizes(1, 64))
    w, scale, zp, bias = data.draw(int8_weights(n, k))
    packed, w_sum, has_m128 = pack(w)
    x = np.zeros((2, k), np.float32)
    args = dict(x=x, packed=packed, w_sum=w_sum, w_scale=scale, w_zero_point=zp, bias=bias, out_features=n,
                w_has_m128=has_m128)
    broken = data.draw(st.sampled_from(["x_rank", "x_dtype", "k", "packed", "w_sum", "scale", "zp_range",
                                        "bias", "out_features", "mode", "threads", "x_type"]))
    bad = {
        "x_rank": dict(x=np.zeros(k, np.float32)),
        "x_dtype": dict(x=np.zeros((2, k), np.float64)),
        "k": dict(x=np.zeros((2, k + 4), np.float32)),
        "packed": dict(packed=packed[:-1]),
        "w_sum": dict(w_sum=w_sum[:-1]),
        "scale": dict(w_scale=scale[:-1]),
        "zp_range": dict(w_zero_point=np.full(n, 128, np.int32)),
        "bias": dict(bias=np.zeros(n + 1, np.float32)),
        "out_features": dict(out_features=data.draw(st.sampled_from([0, -1, n + 16, 2**63 - 1]))),
        "mode": dict(mode="int4"),
        "threads": dict(nthreads=data.draw(st.sampled_from([0, -3, 1025]))),
        "x_type": dict(x=[[0.0] * k] * 2),
    }[broken]
    args.update(bad)
    raises_clearly(lambda: _C.linear_int8(**args))


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 4))
    cout = groups * draw(st.integers(1, 7))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    batch, height, width = draw(st.integers(0, 3)), draw(st.integers(0, 9)), draw(st.integers(0, 9))
    return groups, cin, cout, (kh, kw), stride, padding, dilation, batch, height, width


@PROFILE
@given(conv_cases(), st.data(), ISAS, THREADS)
def test_conv2d_int8(case, data, isa, nthreads):
    groups, cin, cout, kernel, stride, padding, dilation, batch, height, width = case
    w, scale, zp, bias = data.draw(int8_weights(cout, cin // groups * kernel[0] * kernel[1]))
    w4 = w.reshape(cout, kernel[0], kernel[1], cin // groups)  # packed K order: (kh, kw, in)
    packed, w_sum, has_m128 = pack(w, groups)
    dtype = data.draw(st.sampled_from(SOURCE_DTYPES))
    xv = data.draw(float_values(batch * cin * height, width)).reshape(batch, cin, height, width)
    a = as_dtype(xv, dtype)
    if data.draw(st.booleans()) and width > 1:
        a = np.repeat(a, 2, axis=3)[..., ::2]  # non-contiguous: the C layer copies
    x = to_torch(a).float()
    call = lambda: _C.conv2d_int8(a, packed, w_sum, scale, zp, bias, cout, has_m128, kernel,  # noqa: E731
                                  stride, padding, dilation, groups, nthreads=nthreads)
    fits = all(size + 2 * p >= d * (k - 1) + 1 for size, p, d, k in
               zip((height, width), padding, dilation, kernel))
    if not fits:
        raises_clearly(call)
        return
    with at_isa(isa):
        y = call()
    out_h = (height + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    assert y.shape == (batch * out_h * out_w, cout)
    if batch == 0 or height * width == 0:  # no pixel at all, or only padding: the bias (the twin cannot reshape)
        assert_same(y, np.broadcast_to(np.zeros(cout, np.float32) if bias is None else bias, y.shape), "padding")
        return
    weight = torch.from_numpy(np.ascontiguousarray(w4.transpose(0, 3, 1, 2)))
    want = reference.conv2d_int8(x, weight, torch.from_numpy(scale), torch.from_numpy(zp),
                                 None if bias is None else torch.from_numpy(bias), stride, padding, dilation, groups)
    b, _, oh, ow = want.shape
    assert_same(y.reshape(b, oh, ow, cout).transpose(0, 3, 1, 2), want, "conv")


@PROFILE
@given(st.data())
def test_conv2d_int8_bad_arguments(data):
    x = np.zeros((1, 2, 5, 5), np.float32)
    w, scale, zp, bias = data.draw(int8_weights(4, 2 * 9))
    packed, w_sum, has_m128 = pack(w)
    args = [x, packed, w_sum, scale, zp, bias, 4, has_m128, (3, 3), (1, 1), (0, 0), (1, 1), 1]
    where = data.draw(st.sampled_from([0, 8, 9, 10, 11, 12, 6]))
    args[where] = {
        0: data.draw(st.sampled_from([np.zeros((2, 5, 5), np.float32), np.zeros((1, 2, 5, 5), np.int32),
                                      np.zeros((1, 2, 5, 5), ">f4"), np.zeros((1, 3, 5, 5), np.float32)])),
        8: data.draw(st.sampled_from([(0, 3), (3,), (2**20 + 1, 1), "33", (3.5, 3)])),
        9: data.draw(st.sampled_from([(0, 1), (-1, 1), (1, 2**40)])),
        10: data.draw(st.sampled_from([(-1, 0), (2**21, 0), None])),
        11: data.draw(st.sampled_from([(0, 1), (3, 2**31)])),
        12: data.draw(st.sampled_from([0, -1, 3, 2**62])),
        6: data.draw(st.sampled_from([0, 5, 2**63 - 1])),
    }[where]
    raises_clearly(lambda: _C.conv2d_int8(*args))


# ---- int4 (int4.c) -------------------------------------------------------------------------------------

GROUPS = st.sampled_from([32, 64, 128, 256, 4096])
BAD_GROUPS = st.sampled_from([0, -32, 31, 48, 2**31, 2**62])


@PROFILE
@given(st.data(), GROUPS | BAD_GROUPS, st.booleans(), st.sampled_from([0, 1, 2, 3, -1]), st.booleans(), THREADS)
def test_q4_quantize(data, group, symmetric, method, with_error, nthreads):
    a, x, layout = data.draw(source_arrays(cols=data.draw(sizes(0, 300))))
    rows, cols = x.shape
    call = lambda: _C.q4_quantize(a, group, symmetric, method, with_error, nthreads=nthreads)  # noqa: E731
    if layout == "big_endian" or group % 32 or not 32 <= group <= 2**30 or method not in (0, 1, 2) or cols == 0:
        raises_clearly(call)
        return
    results = {}
    for isa in SUPPORTED:  # every level gives the scalar reference's bytes
        with at_isa(isa):
            results[isa] = call()
    packed, scale, zero, bad, sx, se = results["scalar"]
    for isa, got in results.items():
        for g, w in zip(got[:3], results["scalar"][:3]):
            assert_same(g, w, isa)
        assert got[3] == bad
    kpad = -(-cols // 32) * 32
    assert packed.shape == (rows, kpad // 2) and scale.shape == zero.shape == (rows, -(-kpad // group))
    finite = torch.isfinite(x.float()).all(dim=1)
    assert bad == (int((~finite).nonzero()[0]) if (~finite).any() else -1)
    # the dequantized rows, by the C kernel and by the pure-torch twin, bit for bit
    d = _C.q4_dequantize(packed, scale, zero, cols, group)
    if rows == 0:  # (the twin cannot reshape an empty weight)
        assert d.shape == (0, cols)
        return
    assert_same(d, unpack_int4(torch.from_numpy(packed), torch.from_numpy(scale), torch.from_numpy(zero), cols, group))
    if method == 0 and bad == -1:  # round to nearest: within half a step (fp16 scale) of every value in range
        step = torch.from_numpy(scale).float().repeat_interleave(group, 1)[:, :cols]
        err = (torch.from_numpy(d) - x.float()).abs()
        in_range = torch.isfinite(step) & (step < 1e4) & (step > 1e-4) & (x.float().abs() < 1e30)
        assert bool((err[in_range] <= step[in_range] * 0.5001 + 1e-30).all())
    assert (sx is None) == (not with_error)


@st.composite
def q4_weights(draw, rows=None, cols=None, group=None):
    """(packed, scale fp16, zero u4.4, cols, group) as q4_quantize makes them, or with random bytes."""
    rows = draw(sizes(0, 24)) if rows is None else rows
    cols = draw(sizes(1, 300)) if cols is None else cols
    group = draw(GROUPS) if group is None else group
    kpad = -(-cols // 32) * 32
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        packed, scale, zero, _, _, _ = _C.q4_quantize(rng.standard_normal((rows, cols)).astype(np.float32), group,
                                                      draw(st.booleans()), 0)
    else:  # any bytes a file could hold: scales may be NaN, Inf or subnormal
        ngroups = -(-kpad // group)
        packed = rng.integers(0, 256, (rows, kpad // 2)).astype(np.uint8)
        scale = rng.integers(0, 2**16, (rows, ngroups)).astype(np.uint16).view(np.float16)
        zero = rng.integers(0, 256, (rows, ngroups)).astype(np.uint8)
    return packed, scale, zero, cols, group


@PROFILE
@given(q4_weights(), st.sampled_from(["ok", "cols", "group", "scale_shape", "packed_width", "int16_scale"]),
       ISAS, THREADS)
def test_q4_dequantize(weight, change, isa, nthreads):
    packed, scale, zero, cols, group = weight
    if change == "int16_scale":
        scale = scale.view(np.int16)
        change = "ok"
    if change == "cols":
        cols = cols + 32 if cols % 2 else -cols
    elif change == "group":
        group = group * 2 if scale.shape[1] > 1 else group + 16
    elif change == "scale_shape":
        scale = np.zeros((scale.shape[0], scale.shape[1] + 1), np.float16)
    elif change == "packed_width":
        packed = np.zeros((packed.shape[0], packed.shape[1] + 8), np.uint8)
    call = lambda: _C.q4_dequantize(packed, scale, zero, cols, group, nthreads=nthreads)  # noqa: E731
    kpad = packed.shape[1] * 2
    consistent = (group % 32 == 0 and 32 <= group <= 2**30 and kpad % 32 == 0 and zero.shape == scale.shape
                  and scale.shape[1] == -(-kpad // group) and kpad - 32 < cols <= kpad)
    if not consistent:
        raises_clearly(call)
        return
    with at_isa(isa):
        d = call()
    if packed.shape[0] == 0:
        assert d.shape == (0, cols)
        return
    want = unpack_int4(torch.from_numpy(packed), torch.from_numpy(scale.view(np.float16)), torch.from_numpy(zero),
                       cols, group)
    assert_same(d, want, "dequantized")


@PROFILE
@given(st.data(), st.sampled_from([0, 1, -1]), st.sampled_from(["float32", "bf16_int16", "bf16_uint16"]),
       st.sampled_from([1, 2, 10**9]), ISAS, THREADS)
def test_q4_linear(data, act_mode, dtype, panel_min_m, isa, nthreads):
    packed, scale, zero, cols, group = data.draw(q4_weights())
    rows = packed.shape[0]
    m = data.draw(sizes(0, 9))
    a, x, _ = data.draw(source_arrays(rows=m, cols=cols, dtypes=[dtype],
                                      layouts=["contiguous", "row_slice", "col_slice"]))
    bias = np.random.default_rng(m).standard_normal(rows).astype(np.float32) if data.draw(st.booleans()) else None

    def call(level):
        with at_isa(level):
            previous = _C.q4_panel_min_m(panel_min_m)
            try:
                return _C.q4_linear(a, packed, scale, zero, group, bias=bias, int8_activations=act_mode,
                                    nthreads=nthreads)
            finally:
                _C.q4_panel_min_m(previous)

    if act_mode == 1 and not (group % 128 == 0 and group <= 4096):  # (any kpad: a copy in whole 128-column chunks)
        raises_clearly(lambda: call(isa))
        return
    y = call(isa)
    assert y.shape == (m, rows) and y.dtype == np.float32
    if act_mode == 1:  # the int8-activation kernel: every level gives the scalar reference's bits
        assert_same(y, call("scalar"), "int8 activations")
    if rows == 0:  # (the twin cannot reshape an empty weight)
        return
    w = unpack_int4(torch.from_numpy(packed), torch.from_numpy(scale), torch.from_numpy(zero), cols, group).double()
    xd = x.double()
    if act_mode != 0 or not bool(torch.isfinite(w).all()) or bool(w.abs().max() >= 1e30):
        return
    # fp32 activations: the float64 product, to fp32 accumulation error, where nothing overflows fp32.
    # The GEMV kernel sums x * code and x per group and subtracts zero_point * sum(x) after, so
    # its rounding scales with |x| * (code + zero_point) * scale, not with |x| * |w|.
    b = 0 if bias is None else torch.from_numpy(bias).double()
    exact = xd @ w.T + b
    code_part = unpack_int4(torch.from_numpy(packed), torch.from_numpy(scale), torch.zeros_like(torch.from_numpy(zero)),
                            cols, group).double()  # code * scale
    terms = code_part.abs() + (code_part - w).abs()  # |code * scale| + |zero_point * scale|
    magnitude = xd.abs().nan_to_num(0, 0, 0) @ terms.T + (0 if bias is None else b.abs())
    good = (xd.abs() < 1e30).all(dim=1, keepdim=True) & (magnitude < 1e37)
    diff = (torch.from_numpy(y).double() - exact).abs()
    assert bool((diff[good] <= (magnitude * (cols + 34) * 2.0**-23 + 1e-37)[good]).all())
    bad_rows = ~torch.isfinite(xd).all(dim=1)
    assert not torch.isfinite(torch.from_numpy(y)[bad_rows]).all(dim=1).any()  # NaN/Inf in, never a number


@PROFILE
@given(st.data())
def test_q4_bad_arguments(data):
    packed, scale, zero, cols, group = data.draw(q4_weights(rows=3))
    x = np.zeros((2, cols), np.float32)
    which = data.draw(st.sampled_from(["x_dtype", "x_cols", "group", "act", "bias", "zero_dtype", "packed_rank",
                                       "threads", "big_endian_scale"]))
    kw = dict(bias=None, int8_activations=0, nthreads=1)
    args = [x, packed, scale, zero, group]
    if which == "x_dtype":
        args[0] = x.astype(np.float16)  # fp16 activations go through float32 in Python, not here
    elif which == "x_cols":
        args[0] = np.zeros((2, -(-cols // 32) * 32 + 1), np.float32)
    elif which == "group":
        args[4] = data.draw(BAD_GROUPS)
    elif which == "act":
        kw["int8_activations"] = data.draw(st.sampled_from([2, -2, 2**31 - 1]))
    elif which == "bias":
        kw["bias"] = np.zeros(4, np.float32)
    elif which == "zero_dtype":
        args[3] = zero.astype(np.int16)
    elif which == "packed_rank":
        args[1] = packed.reshape(-1)
    elif which == "threads":
        kw["nthreads"] = 0
    else:
        args[2] = scale.astype(">f2")
    raises_clearly(lambda: _C.q4_linear(*args, **kw))


# ---- huge-but-cheap shapes: never a wrapped size -----------------------------------------------------------


# A zero-size array may have one dimension near 2^31, 2^32 or 2^63 / itemsize.  Zero rows of
# many columns cost nothing; many rows of zero columns get per-row outputs, so those stay
# beyond what any allocator grants (2^46 rows: outputs past the 2^47-byte x86-64 address
# space, whatever the overcommit setting), never a size that allocates and then fills RAM.
WIDE = [2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**40, 2**61 - 1, 2**62, 2**63 - 1]
TALL = [2**46, 2**61 - 1, 2**62, 2**63 - 1]


@PROFILE
@given(st.data(), st.booleans(), st.sampled_from(["float32", "float16", "int8"]))
def test_huge_empty_shapes(data, tall, dtype):
    """Each entry point returns the right (empty) shape or raises a clear error."""
    itemsize = np.dtype(dtype).itemsize
    huge = min(data.draw(st.sampled_from(TALL if tall else WIDE)), (2**63 - 1) // itemsize)
    shape = (huge, 0) if tall else (0, huge)
    a = np.empty(shape, dtype)
    outcomes = []
    for call in [
        lambda: _C.rows_minmax(a),
        lambda: _C.quantize_rows_fused(a, -128, 127, True),
        lambda: _C.quantize_rows(a, np.ones(1, np.float32), np.zeros(1, np.int32), -128, 127),
        lambda: _C.dequantize_rows(a, np.ones(1, np.float32), np.zeros(1, np.int32)),
        lambda: _C.pack_int8(a),
        lambda: _C.quantize_pack_int8(a, -128, 127, True),
        lambda: _C.q4_quantize(a, 32, False, 0),
        lambda: _C.linear_int8(a, np.zeros(64, np.int8), np.zeros(16, np.int32), np.ones(1, np.float32),
                               np.zeros(1, np.int32), None, 1, False, mode="int8_acc"),
    ]:
        try:
            result = call()
        except CLEAR_ERRORS as e:
            assert str(e)
            outcomes.append(type(e))
            continue
        first = result[0] if isinstance(result, tuple) else result
        assert isinstance(first, np.ndarray)
        outcomes.append(first.shape)
    assert len(outcomes) == 8


# (batch, padding): outputs small enough to compute, or past 2^47 bytes (no allocator grants
# them, whatever the overcommit setting), or past 2^63 (OverflowError)
CONV_HUGE = [(1, 2**10), (3, 2**9), (2**7, 2**20), (2**14, 2**20), (2**21, 2**20), (2**22, 2**20),
             (2**22, 2**20 - 1), (2**40, 0), (2**14, 2**18)]


@PROFILE
@given(st.sampled_from(CONV_HUGE), st.sampled_from([(1, 1), (2, 2), (1, 3)]))
def test_conv_huge_padding_never_wraps(case, kernel):
    """Conv outputs of up to ~2^64 rows from a few bytes of input: the right number of rows, or
    a clear error (OverflowError past 2^63); never a wrapped row count."""
    batch, pad = case
    if batch >= 2**40:  # a broadcast batch: the C layer's contiguous copy is the clear error
        x = np.broadcast_to(np.zeros((1, 1, 1, 1), np.float32), (batch, 1, 1, 1))
        raises_clearly(lambda: _C.conv2d_int8(x, *pack(np.ones((1, kernel[0] * kernel[1]), np.int8))[:2],
                                              np.ones(1, np.float32), np.zeros(1, np.int32), None, 1, False,
                                              kernel, (1, 1), (pad, pad), (1, 1), 1))
        return
    x = np.zeros((batch, 1, 1, 1), np.float32)
    k = kernel[0] * kernel[1]
    if not (1 + 2 * pad >= kernel[0] and 1 + 2 * pad >= kernel[1]):
        return
    packed, w_sum, has_m128 = pack(np.ones((1, k), np.int8))
    out_h, out_w = 1 + 2 * pad - (kernel[0] - 1), 1 + 2 * pad - (kernel[1] - 1)
    rows = batch * out_h * out_w
    try:
        y = _C.conv2d_int8(x, packed, w_sum, np.ones(1, np.float32), np.zeros(1, np.int32), None, 1, has_m128,
                           kernel, (1, 1), (pad, pad), (1, 1), 1)
    except CLEAR_ERRORS as e:
        assert str(e)
        if rows * (-(-k // 4) * 4) >= 2**63:
            assert isinstance(e, OverflowError)
        return
    assert y.shape == (rows, 1)


# ---- settings and introspection -------------------------------------------------------------------------


@PROFILE
@given(st.one_of(st.sampled_from(LEVELS), st.text(max_size=8), st.integers(), st.none(), st.binary(max_size=4)))
def test_set_isa_get_isa_cpu_info(name):
    before = _C.get_isa()
    try:
        if name in SUPPORTED:
            assert _C.set_isa(name) == before
            assert _C.get_isa() == name == _C.cpu_info()["active_isa"]
            assert _C.linear_kernels()["max_in_features"] == 32768
        else:
            raises_clearly(lambda: _C.set_isa(name))
            assert _C.get_isa() == before
    finally:
        _C.set_isa(before)
    info = _C.cpu_info()
    assert info["best_isa"] in LEVELS and all(isinstance(v, (bool, str)) for v in info.values())


@PROFILE
@given(st.one_of(st.integers(-2**70, 2**70), st.sampled_from([-1, 0, 1, 8, 9, 2**63 - 1, 2**63, -2**63]),
                 st.floats(), st.text(max_size=3), st.none()))
def test_thresholds_and_tuning(value):
    is_int = isinstance(value, int)
    for name in ("q4_panel_min_m", "q4_int8_min_m"):  # -1 reads, m >= 1 sets
        fn = getattr(_C, name)
        previous = fn()
        try:
            if is_int and (value == -1 or 1 <= value < 2**63):
                assert fn(value) == previous
                assert fn() == (previous if value == -1 else value)
            else:
                raises_clearly(lambda: fn(value))
        finally:
            fn(previous)
        assert fn() == previous
    previous = _C.set_gemv_max_rows(-1)  # -1 is "choose by thread count", itself a setting
    try:
        if is_int and -1 <= value <= 8:
            assert _C.set_gemv_max_rows(value) == -1
            assert _C.set_gemv_max_rows(previous) == value
        else:
            raises_clearly(lambda: _C.set_gemv_max_rows(value))
    finally:
        _C.set_gemv_max_rows(previous)


@PROFILE
@given(st.one_of(st.booleans(), st.integers(0, 1), st.text(max_size=3), st.sampled_from(["pool", "pthreads"]),
                 st.integers(), st.binary(max_size=3)))
def test_vnni256_switch_and_threading_backend_arguments(value):
    backend = _C.linear_kernels()["threads"]
    if isinstance(value, str) and value in ("pool", "pthreads"):
        previous = _C.set_threading_backend(value)
        assert _C.set_threading_backend(previous) == value
    else:  # anything else: a clear error, nothing changes
        raises_clearly(lambda: _C.set_threading_backend(value))
    assert _C.linear_kernels()["threads"] == backend
    try:
        _C.use_vnni256_for_tests(value)
    except RuntimeError as e:  # this CPU or build has no EVEX VNNI kernel: said so
        assert "VNNI" in str(e)
    finally:
        _C.use_vnni256_for_tests(False)


@PROFILE
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=3), st.binary(max_size=3)))
def test_amx_switch_arguments(value):
    # any truthy / falsy value switches (None only asks); AMX where it can't run: a clear error
    before = _C.use_amx(None)
    try:
        previous = _C.use_amx(value)
        assert previous == before
        assert _C.use_amx(None) == (before if value is None else bool(value))
    except RuntimeError as e:
        assert "AMX" in str(e) and value and not before
    finally:
        _C.use_amx(before)
    assert _C.use_amx(None) == before
