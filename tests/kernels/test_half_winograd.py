"""Winograd F(2x2, 3x3) for the fp16 / bf16 weight Conv2d (csrc/h16_winograd.c,
``_C.h16_conv2d(..., winograd=True)``): every kernel level against the exact (float64) conv
within Winograd's bound, bit for bit against the scalar level (its transforms are one C code
for every level, its 16 products the direct conv's fmaf chains) at every thread count, Inf /
NaN as the direct conv gives them, and the geometry it refuses.

Bound: the transforms add and subtract up to 4 image values and 3 weights before the
products, and the 2x2 outputs of a tile sum up to 9 of the 16 products, so the rounding error
is bounded through the per-tile magnitudes sum_c (sum |w_c| over 3x3) x (sum |x_c| over the
tile's 4x4 window) (+ |bias|): (in_channels + 16) * 2^-24 * 4 times that, a few times the
direct conv's bound for random data (tests/kernels/test_half_conv.py)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mono_quant import _C
from mono_quant.kernels.half_conv import half_conv2d_arrays
from conftest import SUPPORTED, at_isa

HALF = [torch.float16, torch.bfloat16]
# (batch, in, out, padding, height, width): odd outputs (a tile's half outside), block tails
# (out 80, 130), more channels than a chunk (136), more tiles than a strip (100), a batch in
# passes (h16_winograd.c's MAX_TRAFFIC)
CASES = [
    (1, 16, 16, 1, 8, 8),
    (2, 3, 20, 1, 9, 7),
    (1, 1, 1, 0, 3, 3),          # one channel, one output
    (3, 5, 17, 2, 5, 6),         # batch 3, padding 2
    (1, 64, 80, 1, 13, 14),
    (1, 136, 130, 0, 6, 7),
    (1, 16, 33, 1, 20, 20),      # 100 tiles: three strips
    (2, 136, 8, 1, 32, 32),      # 136 x 256 tiles an image > 2^16 / 2: one image a pass
]
IDS = ["x".join(map(str, c)) for c in CASES]


def rand_case(case, dtype, seed=0, bias=True):
    batch, cin, cout, _, height, width = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cin, height, width, generator=g)
    w = torch.randn(cout, cin, 3, 3, generator=g).to(dtype)
    b = torch.randn(cout, generator=g) if bias else None
    return x, w, b


def winograd(x, w, b, padding, nthreads=1, **kw):
    args = (x.numpy(), *half_conv2d_arrays(w, b), (1, 1), (padding, padding), (1, 1), 1)
    return torch.from_numpy(_C.h16_conv2d(*args, nthreads=nthreads, **({"winograd": True} | kw)))


def tile_bound(x, w, b, padding):
    out_h, out_w = x.shape[2] + 2 * padding - 2, x.shape[3] + 2 * padding - 2
    th, tw = (out_h + 1) // 2, (out_w + 1) // 2
    xa = x.double().abs()
    xp = F.pad(xa, (padding, 2 * tw + 2 - x.shape[3] - padding, padding, 2 * th + 2 - x.shape[2] - padding))
    windows = F.avg_pool2d(xp, 4, stride=2) * 16                       # [batch, in, th, tw]
    mag = torch.einsum("bcyx,nc->bnyx", windows, w.double().abs().sum((2, 3)))
    mag = mag.repeat_interleave(2, 2).repeat_interleave(2, 3)[..., :out_h, :out_w]
    if b is not None:
        mag = mag + b.double().abs()[:, None, None]
    return (x.shape[1] + 16) * 2.0 ** -24 * 4 * mag + 1e-30


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_every_level_matches_the_exact_conv(isa, dtype, case, with_bias):
    x, w, b = rand_case(case, dtype, bias=with_bias)
    padding = case[3]
    y = winograd(x, w, b, padding)
    ref = F.conv2d(x.double(), w.double(), None if b is None else b.double(), 1, padding)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    err = (y.double() - ref).abs()
    assert bool((err <= tile_bound(x, w, b, padding)).all()), f"max error {float(err.max())}"


@pytest.mark.skipif("avx2" not in SUPPORTED, reason="needs an AVX2 CPU")
@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_level_and_thread_count_gives_the_scalar_levels_bits(dtype, case):
    x, w, b = rand_case(case, dtype, seed=1)
    with at_isa("scalar"):
        want = winograd(x, w, b, case[3])
    for level in SUPPORTED:
        with at_isa(level):
            for nthreads in (1, 2, 3):
                assert torch.equal(winograd(x, w, b, case[3], nthreads), want), (level, nthreads)


def test_non_contiguous_inputs_give_the_contiguous_bits(isa):
    case = CASES[4]
    x, w, b = rand_case(case, torch.float16)
    want = winograd(x, w, b, 1)
    wide = torch.randn(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3])
    wide[..., ::2] = x
    for view in (wide[..., ::2], x.contiguous(memory_format=torch.channels_last)):
        assert torch.equal(winograd(view, w, b, 1), want)


@pytest.mark.parametrize("where", ["weight_inf", "input_inf", "input_nan", "huge"])
def test_inf_nan_and_overflow_give_the_direct_convs_bits(isa, where):
    """A result that is not finite is recomputed by the direct conv, whose Inf / NaN are torch's."""
    case = CASES[4]
    x, w, b = rand_case(case, torch.float16)
    if where == "weight_inf":
        w[3, 7, 1, 1] = float("inf")
    elif where == "input_inf":
        x[0, 5, 6, 6] = float("-inf")
    elif where == "input_nan":
        x[0, 9, 0, 13] = float("nan")
    else:
        x[0, 2, 4, 4] = 3e38  # the transforms overflow (x1 + x2) where some direct sums stay finite
        x[0, 2, 4, 5] = 3e38
    y = winograd(x, w, b, 1)
    assert torch.equal(y.isnan(), winograd(x, w, b, 1, winograd=False, direct=True).isnan())
    assert np.array_equal(y.numpy(), winograd(x, w, b, 1, winograd=False, direct=True).numpy(), equal_nan=True)
    if where != "huge":  # (there the float32 sums overflow where the float64 ones do not, as in torch's)
        ref = F.conv2d(x.double(), w.double(), b.double(), 1, 1)
        assert torch.equal(torch.isinf(y), torch.isinf(ref))


@pytest.mark.parametrize("case,where", [(CASES[7], (1, 135, 31, 31)), (CASES[7], (0, 0, 0, 0)),
                                        (CASES[1], (1, 2, 8, 6)), (CASES[3], (2, 4, 4, 5))],
                         ids=["second-pass-corner", "first-pass-origin", "odd-edge-tile", "batch3-last-image"])
def test_non_finite_found_by_the_threaded_pass_at_two_threads(isa, case, where):
    """The Inf / NaN check runs inside the threaded GEMM pass (no serial pass over y): an Inf in
    any image of a batch in passes, or under an edge tile whose other half is outside the output,
    still sends the call to the direct conv, at one thread and at two, with the same bits."""
    x, w, b = rand_case(case, torch.bfloat16, seed=5)
    x[where] = float("inf")
    direct = winograd(x, w, b, case[3], winograd=False, direct=True)
    assert not torch.isfinite(direct).all()
    for nthreads in (1, 2):
        assert np.array_equal(winograd(x, w, b, case[3], nthreads=nthreads).numpy(), direct.numpy(), equal_nan=True)


def test_no_input_channels_give_the_bias(isa):
    x = np.zeros((2, 0, 5, 5), np.float32)
    w = np.zeros((20, 0, 3, 3), np.float16)
    bias = np.arange(20, dtype=np.float32)
    y = _C.h16_conv2d(x, w, False, bias, (1, 1), (1, 1), (1, 1), 1, winograd=True)
    assert np.array_equal(y, np.broadcast_to(bias[None, :, None, None], (2, 20, 5, 5)))


@pytest.mark.parametrize("geometry", [((2, 2), (1, 1), 1), ((1, 1), (2, 2), 1), ((1, 1), (1, 1), 2)],
                         ids=["stride2", "dilation2", "groups2"])
def test_other_geometries_are_refused_clearly(geometry):
    stride, dilation, groups = geometry
    x = np.zeros((1, 4, 9, 9), np.float32)
    w = np.zeros((4, 4 // groups, 3, 3), np.float16)
    with pytest.raises(ValueError, match="winograd=True needs a 3x3 kernel, stride 1"):
        _C.h16_conv2d(x, w, False, None, stride, (1, 1), dilation, groups, winograd=True)
    with pytest.raises(ValueError, match="winograd=True needs a 3x3 kernel"):
        _C.h16_conv2d(x, np.zeros((4, 4, 1, 1), np.float16), False, None, (1, 1), (0, 0), (1, 1), 1, winograd=True)


# -- properties (hypothesis), in the manner of test_half_conv_properties.py -----------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from half_conv_specials import check_specials, draw_conv_operands  # noqa: E402
from test_fp16_properties import ENCODINGS  # noqa: E402


@settings(max_examples=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), encoding=st.sampled_from(ENCODINGS), isa=st.sampled_from(SUPPORTED),
       nthreads=st.sampled_from([1, 2, 3]))
def test_winograd_matches_the_exact_conv_with_specials(data, encoding, isa, nthreads):
    """Any batch (0 included), channels, padding and image (down to one output), values with
    zeros, subnormals, large values, Inf and NaN: NaN and Inf where the exact conv has them (a
    result that is not finite is the direct conv's), else within Winograd's bound."""
    draw = data.draw
    batch, cin, cout, padding = draw(st.integers(0, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 20)), \
        draw(st.integers(0, 2))
    height, width = max(1, 3 - 2 * padding) + draw(st.integers(0, 9)), max(1, 3 - 2 * padding) + draw(st.integers(0, 9))
    x, w_bits, w, is_bf16, bias = draw_conv_operands(draw, encoding, (batch, cin, height, width), (cout, cin, 3, 3))
    with at_isa(isa):
        y = _C.h16_conv2d(x, w_bits, is_bf16, bias, (1, 1), (padding, padding), (1, 1), 1, nthreads=nthreads,
                          winograd=True)
    xt, wd = torch.from_numpy(x), w.double()
    bd = None if bias is None else torch.from_numpy(bias).double()
    exact = F.conv2d(xt.double(), wd, bd, 1, padding)
    got, fine = check_specials(y, exact)
    if batch and fine.any():
        bound = tile_bound(xt.nan_to_num(0.0, 0.0, 0.0), wd.nan_to_num(0.0, 0.0, 0.0).float(),
                           None if bd is None else bd.nan_to_num(0.0, 0.0, 0.0).float(), padding)
        assert bool(((got - exact).abs()[fine] <= bound[fine]).all())
