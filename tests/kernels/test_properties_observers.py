"""Properties of the observer entry points of ``_C`` (obs_*) against their
pure-NumPy twins (calibration/observer_reference.py): random shapes (0, 1,
tails), strides, byte orders, NaN/Inf and extremes, and hostile arguments.
Valid calls agree with the twin; invalid ones raise a clear Python error.
Same profiles as test_properties_c.py (MONO_QUANT_FUZZ_LONG=1 for a long run).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mono_quant import _C
from mono_quant.calibration import StreamingHistogram
from mono_quant.calibration import observer_kernels as ok
from mono_quant.calibration import observer_reference as ref
from test_properties_c import CLEAR_ERRORS, PROFILE, raises_clearly

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

F32 = np.float32
# histograms hold counts: whole numbers (the searches are not specified for fractional bins)
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
shapes = hnp.array_shapes(min_dims=3, max_dims=3, min_side=0, max_side=9)


def arrays(shape=shapes):
    """float32 arrays of odd shapes, sometimes big-endian or non-contiguous."""
    return st.tuples(hnp.arrays(F32, shape, elements=floats), st.booleans(), st.booleans()).map(_layout)


def _layout(args):
    a, swapped, strided = args
    if swapped:
        a = a.astype(a.dtype.newbyteorder(">"))
    if strided and a.ndim and a.shape[-1] > 1:
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    return a


@PROFILE
@given(arrays(), st.booleans(), st.booleans())
def test_minmax_agrees_with_the_twin(x, per_channel, scalar_ref):
    axis = 1 if per_channel else None
    channels = x.shape[1] if per_channel else 1
    mn, mx = np.full(channels, np.inf, F32), np.full(channels, -np.inf, F32)
    bad = ok.minmax(x, mn, mx, channel_axis=axis, reference=scalar_ref)
    want_mn, want_mx, want_bad = ref.minmax(np.asarray(x, F32), channel_axis=axis)
    assert bad == want_bad
    if x.size:  # the twin reports +-inf for channels without a finite value, as the kernel leaves them
        np.testing.assert_array_equal(mn, want_mn)
        np.testing.assert_array_equal(mx, want_mx)


@PROFILE
@given(st.lists(hnp.arrays(F32, st.integers(0, 200), elements=floats), min_size=1, max_size=4),
       st.sampled_from([16, 64, 1000, 2048]))
def test_streaming_histogram_equals_the_one_shot_twin(batches, bins):
    h = StreamingHistogram(bins)
    for b in batches:
        h.update(b)
    counts, k0, e, mn, mx, bad = ref.histogram(np.concatenate(batches), bins)
    assert h.nonfinite == bad
    if counts.any():
        assert (h.k0, h.exp, h.min, h.max) == (k0, e, mn, mx)
        np.testing.assert_array_equal(h.counts, counts)
    else:
        assert not h.counts.any()


@PROFILE
@given(hnp.arrays(np.float64, st.integers(0, 300), elements=st.integers(0, 10**6).map(float)),
       st.integers(2, 130), st.integers(1, 4))
def test_entropy_search_agrees_with_the_twin(h, levels, stride):
    best, kl = ok.entropy_search(h, levels, stride)
    want_best, want_kl = ref.entropy_search(h, levels, stride)
    assert kl.shape == want_kl.shape
    np.testing.assert_array_equal(np.isfinite(kl), np.isfinite(want_kl))
    fin = np.isfinite(want_kl)
    np.testing.assert_allclose(kl[fin], want_kl[fin], rtol=1e-9, atol=1e-12)
    if fin.any():
        assert kl[best] == pytest.approx(want_kl[want_best], rel=1e-9, abs=1e-12)


@PROFILE
@given(hnp.arrays(np.float64, st.integers(1, 200), elements=st.integers(0, 10**6).map(float)), st.floats(-100, 100),
       st.floats(1e-3, 10), st.booleans(), st.integers(1, 64))
def test_mse_search_agrees_with_the_twin(h, lo, width, symmetric, candidates):
    hi = lo + width * h.size
    range_lo, range_hi = min(lo, 0.0), max(hi, 0.0)
    qmin, qmax = (-127, 127) if symmetric else (0, 255)
    args = (h, lo, width, range_lo, range_hi, qmin, qmax, symmetric, candidates)
    best, err = ok.mse_search(*args)
    want_best, want_err = ref.mse_search(*args)
    np.testing.assert_allclose(err, want_err, rtol=1e-9, atol=1e-300)
    assert err[best] == pytest.approx(want_err[want_best], rel=1e-9, abs=1e-300)


hostile = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.floats(), st.text(max_size=3),
                    hnp.arrays(st.sampled_from([np.int8, np.float64, np.int64, np.float32]),
                               hnp.array_shapes(max_dims=3, max_side=4)))


@PROFILE
@given(st.sampled_from(["obs_minmax", "obs_hist_update", "obs_entropy_search", "obs_mse_search"]),
       st.lists(hostile, max_size=9))
def test_hostile_arguments_raise_clearly_or_work(name, args):
    """Never a crash: any argument list either works or raises a clear error."""
    try:
        getattr(_C, name)(*args)
    except CLEAR_ERRORS as e:
        assert str(e)


def test_bad_counts_buffer_is_refused():
    counts = np.zeros(8, np.int32)  # the kernel adds into int64 counts in place
    raises_clearly(lambda: _C.obs_hist_update(np.ones(4, F32), counts, 0, 0, False, 1.0, 1.0))
