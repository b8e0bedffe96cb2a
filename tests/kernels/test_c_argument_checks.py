"""Adversarial arguments to mono_quant._C that once crashed, wrapped a size or ran undefined
behaviour (found by probing every entry point with wrong types, dtypes, ranks, layouts, empty
and huge shapes and out-of-range integers): each now either works or raises a clear error.

The arrays are cheap: a huge dimension of an empty array, or a few bytes.  Run under
`make sanitize` too (ASan + UBSan), where the signed overflows below were reports."""
import numpy as np
import pytest

from mono_quant import _C

I8, I32, I64, F32 = np.int8, np.int32, np.int64, np.float32
BIG = 2**63 - 1
INF = float("inf")


def _misaligned(a):
    """A copy of ``a`` one byte past an aligned address (as a tensor of a safetensors file whose
    header length is odd): C-contiguous, but not aligned to its elements."""
    a = np.ascontiguousarray(a)
    buf = np.zeros(a.nbytes + 1, np.uint8)
    view = buf[1:].view(a.dtype).reshape(a.shape)
    view[...] = a
    assert not view.flags.aligned
    return view


# ---- observers ------------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [2**62, BIG, 299, 300, 301])
def test_entropy_search_with_a_huge_stride_stays_in_bounds(stride):
    # i + stride wrapped negative, and kl[i] was written before the start of the array (SIGSEGV)
    best, kl = _C.obs_entropy_search(np.ones(300), 128, stride=stride)
    assert best in (128, 300)
    assert np.isfinite(kl[[128, 300]]).all() and np.isnan(np.delete(kl, [128, 300])).all()


def test_entropy_search_huge_stride_same_as_the_largest_useful_one():
    h = np.abs(np.random.default_rng(0).standard_normal(1000))
    a, b = _C.obs_entropy_search(h, 128, stride=BIG), _C.obs_entropy_search(h, 128, stride=1000)
    assert a[0] == b[0] and np.array_equal(a[1], b[1], equal_nan=True)


def _grid():
    counts = np.zeros(64, I64)
    grid = _C.obs_hist_update(np.array([0.0, 1.0], F32), counts, 0, 0, False, 0.0, 0.0)[:5]
    return counts, grid


@pytest.mark.parametrize("bad", [BIG, 2**62, -1, -(2**63)])
def test_hist_counts_that_no_data_could_give_are_refused(bad):
    # int64 sums of corrupt counts overflowed while re-binning (UBSan: signed integer overflow)
    counts, grid = _grid()
    counts[:] = 2**62 if bad == 2**62 else 0
    counts[-1] = bad
    before = counts.copy()
    with pytest.raises(ValueError, match="counts.*corrupt"):
        _C.obs_hist_update(np.array([-1e30, 1e30], F32), counts, *grid)
    assert np.array_equal(counts, before)  # untouched


def test_hist_counts_up_to_the_limit_still_update():
    counts, grid = _grid()
    counts[0] = 2**62
    total = int(counts.sum())
    _C.obs_hist_update(np.array([0.5], F32), counts, *grid)
    assert counts.sum() == total + 1


# ---- the dynamic conv's route rule ------------------------------------------------------------

@pytest.mark.parametrize("where", [2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("value", [2**20 + 1, 2**62, BIG])
def test_direct_applies_with_huge_sizes_is_a_plain_false(where, value):
    # (kh - 1) * dh + 4 overflowed int64 in the rule (UBSan report) for huge kernels and dilations
    args = [8, 1, 3, 3, 1, 1, 1, 1, False]
    args[where] = value
    if where in (2, 6):  # kernel and dilation of one axis both huge: the product's worst case
        args[2], args[6] = value, value
    assert _C.conv2d_int8_direct_applies(*args) is False


# ---- static int8 kernels: sizes of empty arrays near 2^63 ---------------------------------------

def _conv_static(x, out, kernel=(1, 1), padding=(0, 0), packed=64, w_sum=16, n_scale=1):
    return _C.conv2d_static(x, np.zeros(packed, I8), np.zeros(w_sum, I32), np.ones(n_scale, F32), None, None, out,
                            False, kernel, (1, 1), padding, (1, 1), 1, -INF, INF, 1.0)


def test_static_conv_height_near_2_63_is_an_overflow_error():
    # height + 2 * padding wrapped negative: "smaller than the dilated kernel" (and undefined behaviour)
    for call in (lambda: _conv_static(np.zeros((0, BIG, 1, 1), I8), np.zeros((0, 1, 1, 1), F32), padding=(1, 1)),
                 lambda: _C.depthwise_static(np.zeros((0, BIG, 1, 1), I8), np.zeros((1, 1, 1), I8), None,
                                             np.ones(1, F32), None, np.zeros((0, 1, 1, 1), I8), (1, 1), (1, 1),
                                             (1, 1), -INF, INF, 1.0)):
        with pytest.raises(OverflowError, match="padded input"):
            call()


def test_static_conv_channels_times_kernel_area_past_2_63_is_refused():
    # 2^62 channels x a 4x4 kernel wrapped to k = 0, which passed the k <= 32768 check
    x, out = np.zeros((0, 1, 1, 2**62), I8), np.zeros((0, 2, 2, 1), F32)
    with pytest.raises(ValueError, match="kernel area must be at most"):
        _conv_static(x, out, kernel=(4, 4), padding=(2, 2), packed=0)


@pytest.mark.parametrize("n", [BIG, 2**62, 2**61 + 1])
def test_static_conv_out_channels_near_2_63_is_an_overflow_error(n):
    # the expected packed / w_sum sizes wrapped ("packed must have -9223372036854775744 bytes")
    with pytest.raises(OverflowError, match="does not fit"):
        _conv_static(np.zeros((0, 1, 1, 1), I8), np.zeros((0, 1, 1, n), I8), packed=0, w_sum=0, n_scale=0)


# ---- static int8 kernels: misaligned buffers ----------------------------------------------------

def _static_linear_args(rows=3, k=7, n=5):
    rng = np.random.default_rng(1)
    x = rng.integers(-127, 128, (rows, 1, 1, k)).astype(I8)
    packed, w_sum, m128 = _C.pack_int8(rng.integers(-127, 128, (n, k)).astype(I8))
    return [x, packed, w_sum, rng.random(n).astype(F32) + 0.01, None, rng.standard_normal(n).astype(F32),
            np.zeros((rows, 1, 1, n), F32), m128, (1, 1), (1, 1), (0, 0), (1, 1), 1, -INF, INF, 1.0]


@pytest.mark.parametrize("which", [2, 3, 5], ids=["w_sum", "x_w_scale", "bias"])
def test_static_conv_reads_a_misaligned_input_through_an_aligned_copy(which):
    args = _static_linear_args()
    _C.conv2d_static(*args)
    expected = args[6].copy()
    args[which], args[6] = _misaligned(args[which]), np.zeros_like(args[6])
    _C.conv2d_static(*args)
    assert np.array_equal(args[6], expected)


def test_static_kernels_refuse_a_misaligned_output():
    args = _static_linear_args()
    args[6] = _misaligned(args[6])
    with pytest.raises(ValueError, match="out is not aligned"):
        _C.conv2d_static(*args)
    x = np.random.default_rng(2).integers(-127, 128, (2, 3, 4, 5)).astype(I8)
    with pytest.raises(ValueError, match="out is not aligned"):
        _C.dequantize_static(x, 0.5, _misaligned(np.zeros((2, 5, 3, 4), F32)))


def test_static_quantize_of_a_misaligned_float_input():
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5)).astype(F32)
    want, got = np.zeros((2, 4, 5, 3), I8), np.zeros((2, 4, 5, 3), I8)
    _C.quantize_static(x, 10.0, want)
    _C.quantize_static(_misaligned(x), 10.0, got)
    assert np.array_equal(want, got)
