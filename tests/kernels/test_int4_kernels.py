"""INT4 kernels: golden bytes, SIMD vs scalar reference (exact), a pure-torch
oracle for round-to-nearest, the half-step bound, the methods' error
ordering, edge values, and the linear kernels against a float64 matmul."""
import math

import numpy as np
import pytest
import torch

from mono_quant import _C, kernels
from mono_quant.int4 import int4_linear, quantize_int4, set_int8_activations, unpack_int4
from mono_quant import NonFiniteWeightError, quantize_weight
from conftest import SUPPORTED, at_isa


@pytest.fixture(autouse=True)
def restore_panel_min_m():
    panel = _C.q4_panel_min_m()
    yield
    _C.q4_panel_min_m(panel)


def q4(x, group, symmetric=False, method=0, with_error=False):
    return _C.q4_quantize(kernels.to_numpy(x.contiguous()), group, symmetric, method, with_error)


def grouped(cols, group_size):
    return group_size if group_size is not None else max(32, -(-cols // 32) * 32)


# ---- format -------------------------------------------------------------------------------


def test_golden_bytes():
    # codes 0..15 then 15..0: scale 1 (fp16 0x3C00), zero-point 0
    row = torch.tensor([list(range(16)) + list(range(15, -1, -1))], dtype=torch.float32)
    packed, scale, zero, bad, _, _ = q4(row, 32)
    assert bad == -1
    assert packed.tobytes().hex() == "f0e1d2c3b4a5968778695a4b3c2d1e0f"
    assert scale.view(np.uint16).tolist() == [[0x3C00]]
    assert zero.tolist() == [[0]]
    # -8..7 twice: scale 1, zero-point 8 (u4.4: 128), codes x + 8
    row = torch.arange(-8, 8, dtype=torch.float32).repeat(2).reshape(1, 32)
    packed, scale, zero, _, _, _ = q4(row, 32)
    assert zero.tolist() == [[128]]
    assert packed.tobytes().hex() == "".join(f"{j * 17:02x}" for j in range(16))


@pytest.mark.parametrize("cols", [1, 31, 33, 100, 257])
@pytest.mark.parametrize("group", [32, 64, 128, 256])
def test_unpack_matches_torch_oracle(cols, group):
    x = torch.randn(5, cols)
    packed, scale, zero, _, _, _ = q4(x, group)
    assert packed.shape == (5, -(-cols // 32) * 16)
    assert scale.shape == zero.shape == (5, -(-(-(-cols // 32) * 32) // group))
    c = torch.from_numpy(_C.q4_dequantize(packed, scale, zero, cols, group))
    t = unpack_int4(torch.from_numpy(packed), torch.from_numpy(scale), torch.from_numpy(zero), cols, group)
    assert torch.equal(c, t)


def _rtn_oracle(x, group):
    """Round-to-nearest int4 in plain torch: fp16 scale rounded up, integer zero-point."""
    rows, cols = x.shape
    kpad = -(-cols // 32) * 32
    xp = torch.zeros(rows, kpad)
    xp[:, :cols] = x
    codes, scales, zeros = [], [], []
    for g0 in range(0, kpad, group):
        xg = xp[:, g0:g0 + group]
        lo, hi = xg.amin(1).clamp(max=0), xg.amax(1).clamp(min=0)
        s = (hi - lo) / 15
        s = torch.where(hi - lo > 0, s, torch.ones_like(s))
        s16 = s.half()
        s16 = torch.where(s16.float() < s, torch.nextafter(s16, torch.tensor(math.inf, dtype=torch.half)), s16)
        sf = s16.float()
        z = (-torch.round(lo / sf)).clamp(0, 15)
        q = torch.round(z[:, None] + xg * (1.0 / sf)[:, None]).clamp(0, 15)
        codes.append(q)
        scales.append(s16)
        zeros.append((z * 16).to(torch.uint8))
    return torch.cat(codes, 1), torch.stack(scales, 1), torch.stack(zeros, 1)


@pytest.mark.parametrize("cols,group", [(64, 32), (100, 64), (300, 128), (512, 256)])
def test_rtn_matches_torch_oracle(cols, group):
    x = torch.randn(6, cols) * 0.05
    packed, scale, zero, _, _, _ = q4(x, group)
    codes, s16, z8 = _rtn_oracle(x, group)
    assert torch.equal(torch.from_numpy(scale), s16)
    assert torch.equal(torch.from_numpy(zero), z8)
    blocks = torch.from_numpy(packed).reshape(6, -1, 16).to(torch.int32)
    unpacked = torch.cat([blocks & 15, blocks >> 4], 2).reshape(6, -1).float()
    assert torch.equal(unpacked, codes)


# ---- SIMD vs reference -----------------------------------------------------------------------


def _edge_rows(cols):
    g = torch.Generator().manual_seed(cols)
    rows = [
        torch.randn(cols, generator=g),
        torch.zeros(cols),
        torch.full((cols,), 3.0),
        torch.distributions.StudentT(2.0).sample((cols,)),
        torch.randn(cols, generator=g) * 1e-30,  # below fp16's range: smallest scale
        torch.randn(cols, generator=g) * 1e30,   # above it: largest scale, codes clamp
        -torch.rand(cols, generator=g),          # all negative
    ]
    return torch.stack(rows)


@pytest.mark.parametrize("cols", [1, 17, 32, 33, 100, 255, 513])
@pytest.mark.parametrize("group", [32, 64, 128, 256, None])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_simd_matches_scalar_exactly(cols, group, symmetric):
    x = _edge_rows(cols)
    grp = grouped(cols, group)
    results = {}
    for isa in SUPPORTED:
        for method in range(3):
            with at_isa(isa):
                p, s, z, bad, sx, se = q4(x, grp, symmetric, method, True)
                assert bad == -1
                d = _C.q4_dequantize(p, s, z, cols, grp)
            assert np.isfinite(d).all()
            results[isa, method] = (p, s.view(np.uint16), z, d, se)
    for (isa, method), got in results.items():
        want = results["scalar", method]
        for a, b in zip(got[:4], want[:4]):
            np.testing.assert_array_equal(a, b, err_msg=f"{isa} method {method}")


@pytest.mark.parametrize("source", [torch.float16, torch.bfloat16])
def test_half_inputs_widen_exactly(source):
    x = torch.randn(4, 200).to(source)
    for method in range(3):
        a = q4(x, 64, False, method)
        b = q4(x.float(), 64, False, method)
        for u, v in zip(a[:3], b[:3]):
            np.testing.assert_array_equal(u, v)


def test_non_contiguous_input():
    w = torch.randn(96, 40)
    a = quantize_int4(w.t(), group_size=32)[0]
    b = quantize_int4(w.t().contiguous(), group_size=32)[0]
    assert torch.equal(a.qdata, b.qdata) and torch.equal(a.scale, b.scale)


# ---- accuracy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("group_size", [32, 128, None])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_rtn_within_half_a_step(group_size, symmetric):
    x = torch.randn(16, 300) * torch.rand(16, 1) * 4
    qw, _ = quantize_int4(x, group_size=group_size, symmetric=symmetric, method="rtn")
    grp = qw.group
    step = qw.scale.float().repeat_interleave(grp, 1)[:, :300]
    err = (qw.dequantize() - x).abs()
    assert bool((err <= 0.5 * step * (1 + 1e-5) + 1e-12).all())


def _heavy(shape, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.distributions.StudentT(3.0).sample(shape) * 0.02
    sparse = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < 0.05)
    return {"gauss": torch.randn(shape, generator=g) * 0.02, "student_t": t, "sparse": sparse,
            "uniform": torch.rand(shape, generator=g) - 0.3}


@pytest.mark.parametrize("kind", ["gauss", "student_t", "sparse", "uniform"])
@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_methods_never_worse_than_rtn(kind, group, symmetric):
    x = _heavy((32, 512), seed=group)[kind]
    errs = [q4(x, group, symmetric, m, True)[5] for m in range(3)]
    # per row (a sum of per-group errors, each never worse than the previous method's)
    assert (errs[1] <= errs[0] * (1 + 1e-6)).all()
    assert (errs[2] <= errs[1] * (1 + 1e-6)).all()


@pytest.mark.parametrize("cols,group", [(40, 32), (100, 64), (7, None), (50, None), (300, 128)])
def test_methods_never_worse_on_the_real_weights_of_a_padded_group(cols, group):
    """The last group's zero padding (columns up to a multiple of 32) was scored with the real weights:
    HQQ, averaging its zero-point over it too, came out worse than MSE on 3.6% of 40-column rows."""
    x = torch.randn(2000, cols, generator=torch.Generator().manual_seed(cols))
    errs = [q4(x, grouped(cols, group), False, m, True)[5] for m in range(3)]
    assert (errs[1] <= errs[0] * (1 + 1e-6)).all()
    assert (errs[2] <= errs[1] * (1 + 1e-6)).all()


@pytest.mark.parametrize("kind", ["gauss", "student_t"])
def test_mse_gains_half_a_db_at_group_128(kind):
    x = _heavy((64, 1024), seed=1)[kind]
    sq = [quantize_int4(x, group_size=128, method=m, with_error=True)[1] for m in ("rtn", "mse", "hqq")]
    assert sq[1] - sq[0] >= 0.5
    assert sq[2] >= sq[1]


def test_nan_and_inf_name_the_row():
    x = torch.randn(5, 64)
    x[3, 10] = math.nan
    with pytest.raises(NonFiniteWeightError) as info:
        quantize_int4(x)
    assert info.value.row == 3
    x[3, 10] = 0
    x[1, 63] = math.inf
    with pytest.raises(NonFiniteWeightError):
        quantize_weight(x, "int4", group_size=32)


def test_input_not_modified():
    x = torch.randn(8, 100)
    before = x.clone()
    quantize_int4(x, method="hqq")
    assert torch.equal(x, before)


# ---- linear -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["gemv", "panel"])
@pytest.mark.parametrize("m", [1, 3, 5, 9])
@pytest.mark.parametrize("rows,cols,group", [(1, 32, 32), (7, 33, 32), (13, 100, 64), (9, 1100, 128),
                                              (6, 300, None), (5, 256, 128)])
def test_linear_matches_float64(isa, path, m, rows, cols, group):
    before = set_int8_activations(False)  # the fp32-activation kernels (int8 ones: below)
    _C.q4_panel_min_m(1 if path == "panel" else 1000)
    w = torch.randn(rows, cols)
    qw, _ = quantize_int4(w, group_size=group, method="rtn")
    x = torch.randn(m, cols)
    bias = torch.randn(rows)
    want = x.double() @ qw.dequantize().double().T + bias.double()
    got = int4_linear(x, qw, bias)
    set_int8_activations(before)
    tol = 1e-5 * (x.double().abs() @ qw.dequantize().double().abs().T + 1)
    assert got.dtype == torch.float32 and got.shape == (m, rows)
    assert bool(((got.double() - want).abs() <= tol).all())


@pytest.mark.parametrize("path", ["gemv", "panel"])
def test_linear_bf16_activations(path):
    _C.q4_panel_min_m(1 if path == "panel" else 1000)
    qw, _ = quantize_int4(torch.randn(40, 200), group_size=64)
    x = torch.randn(2, 3, 200).to(torch.bfloat16)
    got = int4_linear(x, qw)
    want = (x.float() @ qw.dequantize().T)
    assert got.dtype == torch.bfloat16 and got.shape == (2, 3, 40)
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)


def test_linear_zero_rows_of_x():
    qw, _ = quantize_int4(torch.randn(8, 64), group_size=32)
    assert int4_linear(torch.randn(0, 64), qw).shape == (0, 8)


def test_bits_per_weight_at_group_128():
    qw, _ = quantize_int4(torch.randn(256, 4096), group_size=128)
    assert qw.qdata.dtype == torch.uint8 and qw.qdata.shape == (256, 2048)
    assert qw.scale.dtype == torch.float16 and qw.zero_point.dtype == torch.uint8
    bits = 8 * qw.nbytes / (256 * 4096)
    assert bits == pytest.approx(4 + 24 / 128)


# ---- argument checks --------------------------------------------------------------------------------


def test_bad_arguments_raise():
    x = torch.randn(4, 64)
    p, s, z, _, _, _ = q4(x, 32)
    with pytest.raises(ValueError):
        q4(x, 48)
    with pytest.raises(ValueError):
        q4(x, 32, method=3)
    with pytest.raises(ValueError):
        _C.q4_dequantize(p, s, z, 100, 32)  # cols do not fit the packed row
    with pytest.raises(ValueError):
        _C.q4_dequantize(p, s[:, :1], z, 64, 32)
    with pytest.raises(TypeError):
        _C.q4_dequantize(p.astype(np.int8), s, z, 64, 32)
    with pytest.raises(ValueError):
        _C.q4_linear(np.zeros((2, 31), np.float32), p, s, z, 32)
    with pytest.raises(ValueError):
        _C.q4_linear(np.zeros((2, 64), np.float32), p, s, z, 32, bias=np.zeros(3, np.float32))
    with pytest.raises(ValueError):
        quantize_int4(x, group_size=100)
    with pytest.raises(ValueError):
        quantize_int4(x, method="gptq")
    with pytest.raises(ValueError):
        quantize_int4(torch.randn(10))
    with pytest.raises(TypeError):
        quantize_int4(torch.ones(4, 4, dtype=torch.int32))
    with pytest.raises(ValueError):
        quantize_weight(x, "int8", method="mse")


# ---- int8-activation kernel ---------------------------------------------------------------------------


@pytest.mark.parametrize("rows,cols,group", [(1, 128, 128), (7, 256, 128), (9, 1000, 256), (6, 640, None),
                                              (5, 4096, 4096)])
@pytest.mark.parametrize("m", [1, 2, 5])
def test_int8_activations_exact_vs_reference_and_close_to_float(isa, rows, cols, group, m):
    qw, _ = quantize_int4(torch.randn(rows, cols), group_size=group, method="mse")
    x = torch.randn(m, cols) * torch.linspace(0.1, 3, cols)
    x[0, :7] = 0
    args = (x.numpy(), qw.qdata.numpy(), qw.scale.numpy(), qw.zero_point.numpy(), qw.group)
    with at_isa("scalar"):
        want = _C.q4_linear(*args, int8_activations=1)  # the reference kernel
    got = _C.q4_linear(*args, int8_activations=1)
    np.testing.assert_array_equal(got, want)
    # within the activation rounding: |sum w (x - xq s)| <= sum |w| s / 2 per group
    w = qw.dequantize().double()
    exact = x.double() @ w.T
    grp, kpad = qw.group, -(-cols // 32) * 32
    xs = torch.zeros(m, kpad, dtype=torch.float64)
    xs[:, :cols] = x.double()
    amax = xs.abs().reshape(m, -1, grp).amax(-1) if kpad % grp == 0 else None
    step = (amax / 127).repeat_interleave(grp, 1)[:, :cols]
    bound = (step / 2) @ w.abs().T * 1.001 + 1e-4
    assert bool(((torch.from_numpy(got).double() - exact).abs() <= bound).all())


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("rows,cols,group", [(16, 128, 128), (37, 768, 128), (50, 1000, 256), (33, 640, None),
                                              (400, 256, 128)])
def test_int8_activations_one_row_in_16_row_blocks(isa, rows, cols, group, nthreads):
    """Batch 1 on AVX-512 VNNI takes 16 weight rows at a time (their tail the 4-row loop,
    then the reference): the reference kernel's bits on every row, split over threads too."""
    qw, _ = quantize_int4(torch.randn(rows, cols), group_size=group, method="mse")
    x = torch.randn(1, cols) * torch.linspace(0.1, 3, cols)
    bias = torch.randn(rows).numpy()
    args = (x.numpy(), qw.qdata.numpy(), qw.scale.numpy(), qw.zero_point.numpy(), qw.group)
    with at_isa("scalar"):
        want = _C.q4_linear(*args, bias=bias, int8_activations=1)
    np.testing.assert_array_equal(_C.q4_linear(*args, bias=bias, int8_activations=1, nthreads=nthreads), want)


def test_int8_activations_shape_rules():
    qw, _ = quantize_int4(torch.randn(4, 96), group_size=32)
    args = (np.zeros((1, 96), np.float32), qw.qdata.numpy(), qw.scale.numpy(), qw.zero_point.numpy(), 32)
    with pytest.raises(ValueError, match="128"):
        _C.q4_linear(*args, int8_activations=1)
    with pytest.raises(ValueError):
        _C.q4_linear(*args, int8_activations=2)
    np.testing.assert_array_equal(_C.q4_linear(*args), _C.q4_linear(*args, int8_activations=0))  # auto falls back


@pytest.mark.parametrize("act", [0, 1])
def test_nonfinite_activations_propagate(act):
    qw, _ = quantize_int4(torch.randn(8, 256), group_size=128)
    x = torch.randn(3, 256)
    x[1, 5] = math.nan
    x[2, 200] = math.inf
    for isa in SUPPORTED:
        with at_isa(isa):
            y = torch.from_numpy(_C.q4_linear(x.numpy(), qw.qdata.numpy(), qw.scale.numpy(), qw.zero_point.numpy(),
                                              128, int8_activations=act))
        assert bool(torch.isfinite(y[0]).all())
        assert not bool(torch.isfinite(y[1]).any()) and not bool(torch.isfinite(y[2]).any())


# ---- threads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", [0, 1])
@pytest.mark.parametrize("rows,cols,m", [(384, 384, 256), (1536, 384, 64), (384, 1536, 64)])
def test_many_activation_rows_are_cut_for_two_threads(isa, act, rows, cols, m):
    """A BERT-sized layer at many activation rows is work for two threads: the
    chunk rule once sized chunks by the weight's bytes alone (1365 rows at 384
    columns), which left these layers on one thread.  Two threads give the same
    bits as one, bias included (added per chunk by the thread that wrote it)."""
    qw, _ = quantize_int4(torch.randn(rows, cols), group_size=128)
    x = torch.randn(m, cols)
    bias = torch.randn(rows)
    args = (x.numpy(), qw.qdata.numpy(), qw.scale.numpy(), qw.zero_point.numpy(), 128, bias.numpy(), act)
    one = _C.q4_linear(*args, nthreads=1)
    before = _C.linear_kernels()["split_calls"]
    two = _C.q4_linear(*args, nthreads=2)
    assert _C.linear_kernels()["split_calls"] > before
    np.testing.assert_array_equal(two, one)
    with at_isa("scalar"):
        want = _C.q4_linear(*args, nthreads=1)
    if act == 1 or isa == "scalar":
        np.testing.assert_array_equal(one, want)
    np.testing.assert_allclose(one, want, rtol=1e-4, atol=1e-3)


def test_one_activation_row_of_a_small_layer_stays_on_one_thread():
    qw, _ = quantize_int4(torch.randn(384, 384), group_size=128)
    args = (torch.randn(1, 384).numpy(), qw.qdata.numpy(), qw.scale.numpy(), qw.zero_point.numpy(), 128)
    before = _C.linear_kernels()["split_calls"]
    _C.q4_linear(*args, nthreads=2)
    assert _C.linear_kernels()["split_calls"] == before
