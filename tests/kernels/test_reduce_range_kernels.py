"""reduce_range (7-bit dynamic activations): the C kernels of every level and variant
(scalar reference, AVX2 maddubs without the sign trick, AVX-VNNI, AVX-512 VNNI) against
the pure-torch twin, bit for bit, on odd shapes and extreme inputs."""
import numpy as np
import pytest
import torch

import mono_quant as mq
from mono_quant import _C, kernels
from mono_quant.kernels import reference
from mono_quant.modules.linear import kernel_args
from torch import nn
from conftest import KERNELS, at_isa

SHAPES = [  # rows, in_features, out_features: tails of every tile (rows 1..13, K % 4, N % 16)
    (1, 1, 1), (3, 5, 17), (7, 37, 19), (13, 64, 33), (5, 130, 40), (25, 100, 3), (12, 4096, 16), (2, 3, 8),
    (29, 1021, 19), (8, 2048, 33),  # rows padded to kp + 64 (linear.c), 12-row tiles and their tails
]


def _weight(n, k, seed, asymmetric):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    zp = torch.randint(-20, 21, (n,), generator=g, dtype=torch.int32) if asymmetric else torch.zeros(n, dtype=torch.int32)
    scale = torch.rand(n, generator=g) * 0.1 + 1e-3
    return q, zp, scale


def _run(x, q, zp, scale, bias, **kw):
    packed, w_sum, has_m128 = kernels.pack_int8(q)
    return kernels.linear_int8(x, packed, w_sum, scale, zp, bias, q.shape[0], has_m128, reduce_range=True, **kw)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("asymmetric", [False, True], ids=["sym_w", "asym_w"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_linear_reduce_range_matches_twin(shape, asymmetric, kernel):
    m, k, n = shape
    q, zp, scale = _weight(n, k, sum(shape), asymmetric)
    g = torch.Generator().manual_seed(m * 31 + k)
    x = torch.randn(m, k, generator=g) * 3 + 0.7  # off-centre: zero-points away from 0 and 127
    bias = torch.randn(n, generator=g)
    ref = reference.linear_int8(x, q, scale, zp, bias, reduce_range=True)
    with at_isa(kernel):
        assert torch.equal(_run(x, q, zp, scale, bias), ref)
        assert torch.equal(_run(x, q, zp, scale, None), reference.linear_int8(x, q, scale, zp, None, reduce_range=True))


@pytest.mark.parametrize("kernel", KERNELS)
def test_linear_reduce_range_extreme_rows(kernel):
    """All-zero, constant, one-sided, huge and tiny rows; -128 weights against codes of 127
    (the largest vpmaddubsw pair sums: 2 * 127 * 128, no int16 saturation)."""
    k, n = 67, 21
    q, zp, scale = _weight(n, k, 5, True)
    q[:5] = -128
    q[5:8] = 127
    rows = [torch.zeros(k), torch.full((k,), 2.5), torch.full((k,), -3.0), torch.rand(k) * 5, -torch.rand(k) * 5,
            torch.randn(k) * 1e30, torch.randn(k) * 1e-30, torch.linspace(-1, 1, k), torch.linspace(0, 100, k)]
    x = torch.stack(rows)
    ref = reference.linear_int8(x, q, scale, zp, None, reduce_range=True)
    with at_isa(kernel):
        assert torch.equal(_run(x, q, zp, scale, None), ref)


@pytest.mark.parametrize("kernel", KERNELS)
def test_linear_reduce_range_nonfinite_row_gives_nan(kernel):
    k, n = 9, 5
    q, zp, scale = _weight(n, k, 1, False)
    x = torch.randn(3, k)
    x[1, 4] = float("inf")
    with at_isa(kernel):
        y = _run(x, q, zp, scale, None)
    ref = reference.linear_int8(x, q, scale, zp, None, reduce_range=True)
    assert torch.isnan(y[1]).all() and torch.isnan(ref[1]).all()
    assert torch.equal(y[[0, 2]], ref[[0, 2]])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_linear_reduce_range_half_inputs(isa, dtype):
    q, zp, scale = _weight(24, 40, 3, True)
    x = (torch.randn(6, 40) * 2).to(dtype)
    assert torch.equal(_run(x, q, zp, scale, None), reference.linear_int8(x.float(), q, scale, zp, None,
                                                                          reduce_range=True))


def test_reduce_range_same_bits_on_every_level():
    """The same integers everywhere: every level and kernel variant gives the scalar reference's bits."""
    q, zp, scale = _weight(50, 300, 7, True)
    x = torch.randn(37, 300) + 1
    with at_isa("scalar"):
        expect = _run(x, q, zp, scale, None)
    for kernel in KERNELS:
        with at_isa(kernel):
            assert torch.equal(_run(x, q, zp, scale, None), expect), kernel


def test_reduce_range_changes_only_the_activations():
    """7-bit codes: each row's integers are 0..127 minus a zero-point, and the result is
    within the activation's quantization noise of the 8-bit path."""
    x = torch.randn(16, 256) + 0.5
    xq, scale = reference.quantize_activations(x, reduce_range=True)
    codes_plus_zp_range = (xq.amax(1) - xq.amin(1))
    assert int(codes_plus_zp_range.max()) <= 127 and int(xq.abs().max()) <= 127
    assert torch.allclose(xq * scale.reshape(-1, 1), x, atol=float(scale.max()))
    q, zp, w_scale = _weight(32, 256, 2, False)
    y7, y8 = _run(x, q, zp, w_scale, None), kernels.linear_int8(x, *kernels.pack_int8(q)[:2], w_scale, zp, None, 32,
                                                               kernels.pack_int8(q)[2])
    exact = x @ (q.float() * w_scale.reshape(-1, 1)).T
    assert (y7 - exact).pow(2).mean() < 16 * (y8 - exact).pow(2).mean() + 1e-6


def test_reduce_range_default_off_is_the_8_bit_path():
    q, zp, scale = _weight(20, 30, 4, True)
    x = torch.randn(4, 30)
    packed, w_sum, has_m128 = kernels.pack_int8(q)
    y = kernels.linear_int8(x, packed, w_sum, scale, zp, None, 20, has_m128)
    assert torch.equal(y, reference.linear_int8(x, q, scale, zp, None))
    assert not torch.equal(y, _run(x, q, zp, scale, None))


@pytest.mark.parametrize("mode", ["weight_only", "int8_acc"])
def test_reduce_range_refused_outside_dynamic_mode(mode):
    q, zp, scale = _weight(16, 8, 0, False)
    packed, w_sum, has_m128 = kernels.pack_int8(q)
    x = np.zeros((2, 8), np.int8 if mode == "int8_acc" else np.float32)
    with pytest.raises(ValueError, match="reduce_range applies to mode 'dynamic' only"):
        _C.linear_int8(x, packed.numpy(), w_sum.numpy(), scale.numpy(), zp.numpy(), None, 16, has_m128, mode=mode,
                       reduce_range=True)


def test_kernel_names_report_the_7_bit_kernel():
    names = {}
    for kernel in KERNELS:
        with at_isa(kernel):
            names[kernel] = _C.linear_kernels()["dynamic_reduce_range"]
    assert names["scalar"] == "scalar_u7"
    if "avx2+maddubs" in names:  # what an AVX2 CPU without AVX-VNNI runs
        assert names["avx2+maddubs"] == "avx2_maddubs_u7"
    if "avx2" in names and not _C.cpu_info()["avx_vnni"]:
        assert names["avx2"] == "avx2_maddubs_u7"


CONV_CASES = [  # in, out, kernel, stride, padding, dilation, groups
    (8, 20, 3, 2, 1, 1, 1), (12, 18, 3, 1, 2, 2, 3), (16, 24, 1, 1, 0, 1, 1), (16, 16, 1, 2, 0, 1, 4),
    (64, 40, 3, 1, 1, 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
def test_conv_reduce_range_matches_twin(case, kernel):
    """Per-image 7-bit codes, the zero padding as each image's zero-point, integer GEMM."""
    cin, cout, k, s, p, d, g = case
    torch.manual_seed(cin + cout)
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g).eval()
    for symmetric in (True, False):
        qconv = mq.quantize(conv, symmetric=symmetric, reduce_range=True).model
        assert qconv.reduce_range
        x = torch.randn(3, cin, 9, 8) + 0.5
        x[1] = 0  # an all-zero image
        with at_isa(kernel), torch.no_grad():  # the C kernels whatever the shape
            packed = kernel_args(qconv)
            y = qconv._packed_conv(x, *packed)
        ref = reference.conv2d_int8(x, qconv.quantized_weight().qdata, qconv.weight_scale, qconv.weight_zero_point,
                                    qconv.bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                                    reduce_range=True)
        assert torch.equal(y, ref)
