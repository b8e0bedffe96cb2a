"""The uint8 weight-only linear (csrc/u8_linear.c, kernels/uint8.py): each level's kernel and panels against
the dequantized weight's product on odd shapes (K tails, one column, all-zero rows, extreme codes
and zero-points, per-tensor parameters, non-contiguous input), the same bits on any thread split,
clear errors for bad arguments, and the uint8 QuantizedLinear on every side of its row rules."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mono_quant as mq
from mono_quant import _C
from mono_quant.kernels import row_rules
from mono_quant.kernels.uint8 import uint8_linear


def _case(m, n, k, seed=0, per_tensor=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    q = torch.randint(0, 256, (n, k), dtype=torch.uint8, generator=g)
    count = 1 if per_tensor else n
    scale = torch.rand(count, generator=g) * 0.1 + 1e-3
    zp = torch.randint(0, 256, (count,), dtype=torch.int32, generator=g)
    bias = torch.randn(n, generator=g)
    return x, q, scale, zp, bias


def _want(x, q, scale, zp, bias):
    w = (q.double() - zp.double().reshape(-1, 1)) * scale.double().reshape(-1, 1)
    return x.double() @ w.T + (0 if bias is None else bias.double())


def _run(x, q, scale, zp, bias=None, nthreads=1, panels=False):
    b = None if bias is None else bias.numpy()
    return torch.from_numpy(_C.u8_linear(x.numpy(), q.numpy(), scale.numpy(), zp.numpy(), b, nthreads=nthreads,
                                         panels=panels))


def _close(got, want, k):
    # fp32 sums of k terms: a few ulps of the terms' magnitudes
    tol = 1e-5 * max(k, 8) ** 0.5 * (want.abs().max().item() + 1)
    assert (got.double() - want).abs().max().item() <= tol


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("n,k", [(1, 1), (2, 7), (3, 8), (4, 9), (13, 33), (7, 130)])
def test_kernel_matches_the_dequantized_product(isa, m, n, k):
    x, q, scale, zp, bias = _case(m, n, k, seed=m * 100 + n * 7 + k)
    _close(_run(x, q, scale, zp, bias), _want(x, q, scale, zp, bias), k)
    _close(_run(x, q, scale, zp), _want(x, q, scale, zp, None), k)


def test_levels_agree_with_the_scalar_twin():
    x, q, scale, zp, bias = _case(6, 37, 203, seed=3)
    previous = _C.set_isa("scalar")
    try:
        ref = _run(x, q, scale, zp, bias)
    finally:
        _C.set_isa(previous)
    _close(_run(x, q, scale, zp, bias), ref.double(), 203)


def test_extremes_zero_rows_and_per_tensor(isa):
    x, q, scale, zp, bias = _case(5, 11, 45, seed=1, per_tensor=True)
    x[2] = 0.0  # an all-zero row: the bias alone
    q[0] = 255
    q[1] = 0
    for z in (0, 255, 128):
        zp = torch.tensor([z], dtype=torch.int32)
        got = _run(x, q, scale, zp, bias)
        _close(got, _want(x, q, scale, zp, bias), 45)
        assert torch.equal(got[2], bias)


def test_non_contiguous_input_and_nan_rows(isa):
    x, q, scale, zp, bias = _case(4, 9, 40, seed=2)
    wide = torch.randn(4, 80)
    xs = wide[:, ::2]  # strided: copied contiguous by the binding
    _close(_run(xs, q, scale, zp, bias), _want(xs.contiguous(), q, scale, zp, bias), 40)
    x[1, 5] = float("nan")
    got = _run(x, q, scale, zp, bias)
    assert torch.isnan(got[1]).all() and torch.isfinite(got[[0, 2, 3]]).all()


@pytest.mark.parametrize("m", [1, 3, 8])
def test_thread_split_gives_the_same_bits(isa, m):
    x, q, scale, zp, bias = _case(m, 300, 2048, seed=4)
    assert torch.equal(_run(x, q, scale, zp, bias, nthreads=1), _run(x, q, scale, zp, bias, nthreads=2))


@pytest.mark.parametrize("m", [8, 9, 13, 70])
@pytest.mark.parametrize("n,k", [(1, 1), (5, 7), (16, 8), (17, 9), (33, 130)])
def test_panels_match_the_dequantized_product(isa, m, n, k):
    x, q, scale, zp, bias = _case(m, n, k, seed=m * 31 + n * 5 + k)
    _close(_run(x, q, scale, zp, bias, panels=True), _want(x, q, scale, zp, bias), k)
    x, q, scale, zp, bias = _case(m, n, k, seed=m + n + k, per_tensor=True)
    _close(_run(x, q, scale, zp, None, panels=True), _want(x, q, scale, zp, None), k)


def test_panels_below_eight_rows_and_at_the_scalar_level_are_the_kernel(isa):
    x, q, scale, zp, bias = _case(7, 20, 50, seed=5)
    assert torch.equal(_run(x, q, scale, zp, bias, panels=True), _run(x, q, scale, zp, bias))
    if isa == "scalar":
        x, q, scale, zp, bias = _case(20, 20, 50, seed=6)
        assert torch.equal(_run(x, q, scale, zp, bias, panels=True), _run(x, q, scale, zp, bias))


@pytest.mark.parametrize("m", [9, 64])
def test_panels_thread_split_gives_the_same_bits(isa, m):
    x, q, scale, zp, bias = _case(m, 300, 200, seed=7)
    assert torch.equal(_run(x, q, scale, zp, bias, nthreads=1, panels=True),
                       _run(x, q, scale, zp, bias, nthreads=2, panels=True))


def test_bad_arguments_raise_clearly():
    x, q, scale, zp, bias = _case(2, 5, 8)
    with pytest.raises(ValueError, match="zero_point\\[1\\] = 256 is outside uint8's 0..255"):
        _C.u8_linear(x.numpy(), q.numpy(), scale.numpy(), np.array([0, 256, 0, 0, 0], np.int32))
    with pytest.raises(ValueError, match="x has 7 features"):
        _C.u8_linear(x[:, :7].contiguous().numpy(), q.numpy(), scale.numpy(), zp.numpy())
    with pytest.raises(TypeError):
        _C.u8_linear(x.numpy(), q.numpy().astype(np.int8), scale.numpy(), zp.numpy())
    with pytest.raises(ValueError, match="bias has 4 entries"):
        _C.u8_linear(x.numpy(), q.numpy(), scale.numpy(), zp.numpy(), bias[:4].numpy())
    with pytest.raises(ValueError, match="length 1 or 5"):
        _C.u8_linear(x.numpy(), q.numpy(), scale[:3].numpy(), zp[:3].numpy())
    with pytest.raises(ValueError, match="scale\\[0\\]"):
        _C.u8_linear(x.numpy(), q.numpy(), np.zeros(5, np.float32), zp.numpy())


def test_empty_shapes():
    x, q, scale, zp, bias = _case(0, 5, 8)
    assert _run(x, q, scale, zp, bias).shape == (0, 5)
    y = _C.u8_linear(np.zeros((3, 0), np.float32), np.zeros((4, 0), np.uint8), np.ones(4, np.float32),
                     np.zeros(4, np.int32), np.arange(4, dtype=np.float32))
    assert np.array_equal(y, np.tile(np.arange(4, dtype=np.float32), (3, 1)))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_uint8_layer_on_every_side_of_the_row_rules(isa, symmetric, granularity):
    torch.manual_seed(0)
    float_layer = nn.Linear(72, 40)
    q = mq.quantize(nn.Sequential(float_layer), dtype="uint8", activations=None, symmetric=symmetric,
                    granularity=granularity).model[0]
    w = q.dequantized_weight(torch.float32)
    kernel_rows, panel_rows = row_rules.U8_KERNEL_MAX_ROWS[isa], row_rules.U8_PANEL_MAX_ROWS[isa]
    for rows in sorted({1, 3, max(kernel_rows, 1), kernel_rows + 1, max(panel_rows, 1), panel_rows + 1}):
        x = torch.randn(rows, 72)
        with torch.no_grad():
            got = q(x)
        _close(got, F.linear(x.double(), w.double(), q.bias.double()), 72)
        assert torch.equal(got, uint8_linear(x, q.weight_qdata, q.weight_scale, q.weight_zero_point, q.bias))
    xb = torch.randn(2, 3, 72).bfloat16()
    with torch.no_grad():
        yb = q(xb)
    assert yb.dtype == torch.bfloat16 and yb.shape == (2, 3, 40)


def test_uint8_layer_gradient_to_the_input():
    torch.manual_seed(0)
    q = mq.quantize(nn.Sequential(nn.Linear(24, 10)), dtype="uint8", activations=None).model[0]
    x = torch.randn(3, 24, requires_grad=True)
    y = q(x)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.allclose(x.grad, g @ q.dequantized_weight(torch.float32), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(y.detach(), q(x.detach()))



@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_float_fill_writes_the_dequantized_weight(granularity):
    # a large conv's weight is dequantized per call into the per-thread buffer by this fill
    torch.manual_seed(0)
    conv = mq.quantize(nn.Sequential(nn.Conv2d(64, 80, 3, padding=1)), dtype="uint8", activations=None,
                       granularity=granularity).model[0]
    shape, fill = conv.format.float_fill(conv)
    assert shape == (80, 64, 3, 3)
    out = torch.full(shape, float("nan"))
    assert fill(out) is out
    assert torch.equal(out, conv.dequantized_weight(torch.float32))
    x = torch.randn(1, 64, 6, 6)
    with torch.no_grad():
        want = F.conv2d(x, conv.dequantized_weight(torch.float32), conv.bias, padding=1)
        assert torch.allclose(conv(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [3, 40, 200])  # the kernel, its panels, torch's op
def test_the_op_passes_opcheck(rows):
    """Schema, fake implementation, autograd registration and dispatch of mono_quant::uint8_linear."""
    x, q, scale, zp, bias = _case(rows, 12, 33, seed=rows)
    torch.library.opcheck(torch.ops.mono_quant.uint8_linear.default,
                          (x.requires_grad_(), q, scale, zp, bias.requires_grad_()))
