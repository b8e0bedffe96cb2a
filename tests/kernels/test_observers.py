"""Observer kernels (csrc/observers.c) against their twins (calibration/observer_reference.py)."""
import numpy as np
import pytest
import torch

from mono_quant.calibration import StreamingHistogram, entropy_range, mse_range, percentile_range, quant_range
from mono_quant.calibration import observer_kernels as ok
from mono_quant.calibration import observer_reference as ref

F32 = np.float32
INF = np.float32(np.inf)


def odd_inputs():
    rng = np.random.default_rng(7)
    yield "zeros", np.zeros((3, 5, 7), F32)
    yield "constant", np.full((2, 4, 9), -3.25, F32)
    yield "single", np.array([[[1.5]]], F32)
    yield "normal", rng.standard_normal((4, 6, 33)).astype(F32)
    yield "huge", (rng.standard_normal((2, 3, 50)) * 1e37).astype(F32)
    yield "tiny", (rng.standard_normal((2, 3, 50)) * 1e-30).astype(F32)
    x = rng.standard_normal((3, 4, 70)).astype(F32)
    x[0, 1, 5], x[1, 2, 69], x[2, 0, 0] = np.nan, np.inf, -np.inf
    yield "nonfinite", x
    yield "all_nan", np.full((2, 2, 3), np.nan, F32)
    yield "extremes", np.array([[[np.finfo(F32).max, -np.finfo(F32).max, 0.0, 1e-45]]], F32)


CASES = list(odd_inputs())


@pytest.mark.parametrize("name,x", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("reference", [False, True], ids=["fast", "scalar_ref"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
def test_minmax_matches_twin(name, x, reference, per_channel):
    axis = 1 if per_channel else None
    c = x.shape[1] if per_channel else 1
    mn, mx = np.full(c, INF), np.full(c, -INF)
    bad = ok.minmax(x, mn, mx, channel_axis=axis, reference=reference)
    want_mn, want_mx, want_bad = ref.minmax(x, axis)
    assert bad == want_bad
    np.testing.assert_array_equal(mn, want_mn)
    np.testing.assert_array_equal(mx, want_mx)


def test_minmax_is_streaming_and_takes_tensors():
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal((5, 3, 17)).astype(F32) * s for s in (1, 10, 0.1)]
    mn, mx = np.full(3, INF), np.full(3, -INF)
    for p in parts:
        ok.minmax(torch.from_numpy(p), mn, mx, channel_axis=1)
    want_mn, want_mx, _ = ref.minmax(np.concatenate(parts), 1)
    np.testing.assert_array_equal(mn, want_mn)
    np.testing.assert_array_equal(mx, want_mx)


def test_minmax_rejects_bad_outputs():
    x = np.zeros((1, 3, 4), F32)
    with pytest.raises(TypeError, match="min must be a writeable"):
        ok.minmax(x, np.zeros(2, F32), np.zeros(3, F32), channel_axis=1)
    with pytest.raises(TypeError, match="float32"):
        ok.minmax(x, np.zeros(3, np.float64), np.zeros(3, F32), channel_axis=1)
    with pytest.raises(ValueError, match="channel_axis=1"):
        ok.minmax(np.zeros(4, F32), np.zeros(1, F32), np.zeros(1, F32), channel_axis=1)


def _stream(batches, bins):
    h = StreamingHistogram(bins)
    for b in batches:
        h.update(b)
    return h


def _assert_hist_equals_oneshot(h, data, bins):
    counts, k0, e, mn, mx, bad = ref.histogram(np.concatenate([np.ravel(d) for d in data]), bins)
    assert h.nonfinite == bad
    if not counts.any():
        assert not h.has_data and not h.counts.any()
        return
    assert (h.k0, h.exp, h.min, h.max) == (k0, e, mn, mx)
    np.testing.assert_array_equal(h.counts, counts)


@pytest.mark.parametrize("name,x", CASES, ids=[c[0] for c in CASES])
def test_histogram_one_batch_equals_oneshot(name, x):
    h = _stream([x], 64)
    _assert_hist_equals_oneshot(h, [x], 64)


@pytest.mark.parametrize("seed", range(6))
def test_histogram_is_exact_whatever_the_batch_split_and_order(seed):
    """Growing ranges re-bin by merging whole bins: equal to the one-shot histogram of all data."""
    rng = np.random.default_rng(seed)
    batches = [(rng.standard_normal(rng.integers(1, 300)) * 10.0 ** rng.uniform(-3, 4)
                + rng.uniform(-50, 50)).astype(F32) for _ in range(8)]
    bins = int(rng.choice([16, 100, 2048]))
    h = _stream(batches, bins)
    _assert_hist_equals_oneshot(h, batches, bins)
    shuffled = [batches[i] for i in rng.permutation(len(batches))]
    h2 = _stream(shuffled, bins)
    assert (h2.k0, h2.exp) == (h.k0, h.exp)
    np.testing.assert_array_equal(h2.counts, h.counts)
    assert h.total == sum(b.size for b in batches)


def test_histogram_mixed_odd_batches_and_huge_growth():
    data = [np.zeros(10, F32), np.array([5.0], F32), np.array([np.nan, 1e-38], F32),
            np.array([-3e38, 3e38], F32), np.array([np.inf], F32), np.array([], F32)]
    h = _stream(data, 32)
    _assert_hist_equals_oneshot(h, data, 32)
    assert h.nonfinite == 2 and h.total == 14


def test_histogram_memory_depends_on_bins_not_samples():
    h = StreamingHistogram(128)
    before = h.counts.nbytes
    for _ in range(5):
        h.update(np.random.default_rng(0).standard_normal(100_000).astype(F32))
    assert h.counts.nbytes == before == 128 * 8 and h.total == 500_000


def test_histogram_rejects_a_grid_off_the_rule():
    h = _stream([np.linspace(-1, 1, 100, dtype=F32)], 64)
    state = h.state()
    StreamingHistogram.from_state(state)  # round trip is fine
    for key, value in [("k0", state["k0"] + 1), ("exp", state["exp"] - 1), ("max", 1e9), ("min", float("nan"))]:
        with pytest.raises(ValueError, match="binning rule"):
            StreamingHistogram.from_state(dict(state, **{key: value}))
    with pytest.raises(ValueError, match="non-negative"):
        StreamingHistogram.from_state(dict(state, counts=-state["counts"]))
    with pytest.raises(ValueError, match="bins"):
        StreamingHistogram(8)


def test_folded_histogram_counts_absolute_values():
    # off the bin edges: a negative value exactly on an edge folds one bin low (documented)
    x = np.array([-2.6, -0.3, 0.0, 0.3, 2.4, 7.0], F32)
    h = _stream([x], 64)
    f, w = h.folded()
    assert w == h.width
    assert f.sum() == x.size
    want = np.zeros_like(f)
    for v in np.abs(x):
        want[int(np.floor(v / w))] += 1
    np.testing.assert_array_equal(f, want)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels,stride", [(128, 1), (64, 3), (16, 1)])
def test_entropy_search_matches_twin(seed, levels, stride):
    rng = np.random.default_rng(seed)
    h = np.histogram(np.abs(rng.standard_t(2 + seed, 30000)), bins=int(rng.integers(levels, 400)))[0].astype(float)
    if seed == 1:
        h[h.size // 3: h.size // 2] = 0  # empty stretches: infinite KL candidates
    best, kl = ok.entropy_search(h, levels, stride)
    want_best, want_kl = ref.entropy_search(h, levels, stride)
    np.testing.assert_array_equal(np.isnan(kl), np.isnan(want_kl))
    np.testing.assert_array_equal(np.isinf(kl), np.isinf(want_kl))
    fin = np.isfinite(want_kl)
    np.testing.assert_allclose(kl[fin], want_kl[fin], rtol=1e-9, atol=1e-12)
    assert kl[best] == pytest.approx(want_kl[want_best], rel=1e-9, abs=1e-12)


def test_entropy_search_degenerate():
    assert ok.entropy_search(np.zeros(0), 128)[0] == 0
    assert ok.entropy_search(np.ones(50), 128)[0] == 50  # fewer bins than levels: the full range
    with pytest.raises(ValueError, match="levels"):
        ok.entropy_search(np.ones(10), 1)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("encoding", ["int8", "int7"])
@pytest.mark.parametrize("shift", [0.0, 3.0])
def test_mse_search_matches_twin(symmetric, encoding, shift):
    rng = np.random.default_rng(3)
    x = (rng.standard_t(3, 50000) + shift).astype(F32)
    h = _stream([x], 512)
    qmin, qmax = quant_range(encoding, symmetric)
    lo, hi = min(h.min, 0.0), max(h.max, 0.0)
    args = (h.counts.astype(float), h.lo, h.width, lo, hi, qmin, qmax, symmetric, 97)
    best, err = ok.mse_search(*args)
    want_best, want_err = ref.mse_search(*args)
    np.testing.assert_allclose(err, want_err, rtol=1e-9)
    assert err[best] == pytest.approx(want_err[want_best], rel=1e-9)


def test_mse_search_validates():
    with pytest.raises(ValueError, match="quantization range"):
        ok.mse_search(np.ones(4), 0.0, 1.0, -1.0, 1.0, 5, 2, True, 10)
    with pytest.raises(ValueError, match="candidates"):
        ok.mse_search(np.ones(4), 0.0, 0.0, -1.0, 1.0, -127, 127, True, 10)


def test_range_searches_clip_heavy_tails_and_keep_easy_ranges():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(200_000).astype(F32)
    x[:20] = 60.0  # a few outliers far out
    h = _stream([x], 4096)
    lo, hi = percentile_range(h, 99.99)
    assert lo == -hi and 3.0 < hi < 6.0
    lo, hi = entropy_range(h)
    assert 2.0 < hi < 30.0 and lo == -hi
    lo, hi = mse_range(h)  # 20 values 55 away cost more than the rounding noise saved: kept
    assert 50.0 < hi <= 60.0 and lo == -hi
    t = _stream([rng.standard_t(2, 200_000).astype(F32)], 4096)  # a heavy tail throughout: clipped
    assert mse_range(t)[1] < 0.9 * max(-t.min, t.max)
    u = _stream([rng.uniform(0, 1, 100_000).astype(F32)], 4096)
    for fn in (entropy_range, mse_range):
        assert fn(u)[1] > 0.9, fn.__name__  # uniform data: nothing worth clipping
    assert percentile_range(u, 100.0) == (-u.max, u.max)
    lo, hi = percentile_range(u, 99.0, symmetric=False)
    assert 0.0 <= lo < 0.01 and 0.99 < hi <= 1.0


def test_folded_histogram_far_from_zero_merges_bins():
    h = _stream([np.array([1000.0, 1000.5], F32)], 64)
    f, w = h.folded()
    assert f.size <= 64 and f.sum() == 2 and w > h.width
    assert np.nonzero(f)[0][0] == int(1000.0 // w)


def test_range_searches_on_empty_and_constant():
    empty = StreamingHistogram(64)
    for fn in (percentile_range, entropy_range, mse_range):
        assert fn(empty) == (0.0, 0.0)
    const = _stream([np.full(100, 2.0, F32)], 64)
    assert entropy_range(const) == (-2.0, 2.0)
    assert percentile_range(const) == (-2.0, 2.0)
    assert mse_range(const)[1] > 1.9


def test_histogram_update_rejects_bad_counts():
    from mono_quant import _C

    x = np.ones(4, F32)
    with pytest.raises(TypeError, match="counts must be a writeable"):
        _C.obs_hist_update(x, np.zeros(64, np.int32), 0, 0, False, 0.0, 0.0)
    ro = np.zeros(64, np.int64)
    ro.flags.writeable = False
    with pytest.raises(TypeError, match="counts must be a writeable"):
        _C.obs_hist_update(x, ro, 0, 0, False, 0.0, 0.0)
    with pytest.raises(ValueError, match="16..16777216 bins"):
        _C.obs_hist_update(x, np.zeros(8, np.int64), 0, 0, False, 0.0, 0.0)


@pytest.mark.parametrize("with_nonfinite", [False, True])
def test_histogram_large_batches_take_the_interleaved_tables_exactly(with_nonfinite):
    rng = np.random.default_rng(11)
    batches = [rng.standard_normal(n).astype(F32) * s for n, s in ((5000, 1.0), (20001, 8.0), (4096, 0.5))]
    if with_nonfinite:
        batches[1][[3, 777, 20000]] = [np.nan, np.inf, -np.inf]
    h = _stream(batches, 256)
    _assert_hist_equals_oneshot(h, batches, 256)
    _, bmin, bmax = StreamingHistogram(256).update_with_extremes(batches[1])
    finite = batches[1][np.isfinite(batches[1])]
    assert (bmin, bmax) == (finite.min(), finite.max())


@pytest.mark.parametrize("n", [10, 5000])
def test_histogram_tiny_negative_values_with_wide_bins(n):
    """A tiny negative value divided by a wide bin underflows: it still belongs to bin -1."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-3000, 3000, n).astype(F32)
    x[:6] = [-1e-45, 1e-45, -0.0, 0.0, -1e-38, -2.5e-39]
    h = _stream([x], 16)
    assert h.exp > 0  # bins wider than 1: 1e-45 * 2^-exp underflows in float
    _assert_hist_equals_oneshot(h, [x], 16)
