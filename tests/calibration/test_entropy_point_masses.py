"""The entropy (KL) range search on distributions with point masses: a ReLU's exact zeros and
the constant outputs of a constant input region must not drive it to clip the tail."""
import numpy as np
import pytest

from mono_quant.calibration import StreamingHistogram
from mono_quant.calibration.ranges import POINT_MASS_FACTOR, entropy_range, without_point_masses


def test_the_zero_bin_of_one_sided_data_takes_its_neighbours_count():
    h = np.array([500.0, 7, 6, 5, 4, 3, 2, 1])
    assert without_point_masses(h, one_sided=True)[0][0] == 7
    # signed data: bin 0 is |x| < w from both sides, no ReLU spike; kept (it is no outlier here)
    signed = np.array([9.0, 8, 8, 7, 6, 5, 4, 3])
    g, mask = without_point_masses(signed, one_sided=False)
    assert np.array_equal(g, signed) and not mask.any()


def test_a_point_mass_inside_populated_bins_is_flattened_and_a_lone_tail_bin_kept():
    h = np.full(64, 10.0)
    h[20] = 10 * POINT_MASS_FACTOR + 1  # a spike
    h[40] = 10 * POINT_MASS_FACTOR       # not above the factor: kept
    h[48:] = 0
    h[60] = 50                           # an outlier alone in an empty tail: kept
    g, mask = without_point_masses(h, one_sided=False)
    assert list(np.flatnonzero(mask)) == [20]
    assert g[20] == 10 and g[40] == h[40] and g[60] == 50
    assert np.array_equal(np.delete(g, 20), np.delete(h, 20))


def relu_with_constant_background(n=200_000, seed=0):
    """Like a first conv's ReLU output on images with a uniform background: half exact zeros,
    a few channel constants holding 2 % of the values each, a long positive tail."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal(n).astype(np.float32) * 1.5, 0)
    k = n // 50
    for i, v in enumerate((0.3, 0.45, 0.6, 0.75)):
        x[i * k:(i + 1) * k] = v
    return x


def clipped_share(x, hi):
    return float((x > hi).mean())


def test_entropy_keeps_the_tail_of_a_relu_output_with_point_masses():
    x = relu_with_constant_background()
    h = StreamingHistogram()
    h.update(x)
    lo, hi = entropy_range(h, one_sided_levels=255)
    assert lo == -hi and clipped_share(x, hi) < 0.002
    # the same search without flattening them clips percents of the values
    from mono_quant.calibration import observer_kernels as ok
    folded, width = h.folded()
    best, _ = ok.entropy_search(folded, 255, 1)
    assert clipped_share(x, best * width) > 0.01


@pytest.mark.parametrize("symmetric", [True, False])
def test_one_sided_levels_default_to_the_codes_the_encoding_spends_there(symmetric):
    x = relu_with_constant_background(seed=1)
    h = StreamingHistogram()
    h.update(x)
    lo, hi = entropy_range(h, symmetric=symmetric)
    assert 0 < hi <= float(x.max())
    assert (lo == -hi) if symmetric else lo >= 0.0


def test_a_point_mass_the_threshold_would_clip_is_put_back_and_searched_again(monkeypatch):
    """Clipping a point mass costs its whole mass: when the search on the flattened histogram
    would clip one, it runs again with that bin at its full count."""
    from mono_quant.calibration import ranges

    rng = np.random.default_rng(3)
    x = np.abs(rng.standard_normal(200_000).astype(np.float32)) * 0.4
    x[:6000] = 1.2
    h = StreamingHistogram()
    h.update(x)
    folded, width = h.folded()
    spike = int(np.argmax(folded[1:])) + 1
    seen = []
    real = ranges.ok.entropy_search

    def search(g, levels, stride):
        seen.append(np.array(g))
        return (spike - 5 if len(seen) == 1 else real(g, levels, stride)[0]), None
    monkeypatch.setattr(ranges.ok, "entropy_search", search)
    lo, hi = entropy_range(h, one_sided_levels=255)
    assert len(seen) == 2
    assert seen[0][spike] < folded[spike] / POINT_MASS_FACTOR and seen[1][spike] == folded[spike]
    assert hi == pytest.approx(real(seen[1], 255, 1)[0] * width)


def test_the_vectorised_rule_equals_the_plain_one():
    from point_mass_reference import point_masses_reference

    rng = np.random.default_rng(4)
    for t in range(150):
        n = int(rng.integers(1, 300))
        f = (rng.integers(0, 30, n) * (rng.random(n) < rng.random())).astype(float)
        f[rng.integers(0, n, 3)] = rng.integers(0, 2000, 3)
        got, want = without_point_masses(f, t % 2 == 0), point_masses_reference(f, t % 2 == 0)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), t
