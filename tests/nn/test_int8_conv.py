"""QuantizedConv2d on the int8 matmul kernels vs F.conv2d on the dequantized weight."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant import _C, kernels, reference
from mono_quant.modules import QuantizedConv2d
from mono_quant.modules.linear import kernel_args
from conftest import MADDUBS, SUPPORTED, at_isa

# every level, plus the AVX2 level's maddubs kernel where the CPU would pick AVX-VNNI instead
GEMM_KERNELS = SUPPORTED + MADDUBS


CASES = [  # in, out, kernel, stride, padding, dilation, groups
    (3, 16, 3, 1, 1, 1, 1),
    (8, 20, 3, 2, 1, 1, 1),
    (8, 12, (3, 1), (1, 2), (0, 1), 1, 1),
    (12, 18, 3, 1, 2, 2, 3),
    (16, 24, 1, 1, 0, 1, 1),  # 1x1: direct
    (16, 16, 1, 2, 0, 1, 4),
    (8, 8, 3, 1, 1, 1, 8),  # depthwise: torch path
]


def _sqnr(ref, out):
    noise = (ref.double() - out.double()).pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(ref.double().pow(2).sum().item() / noise)


def _conv(case, seed):
    cin, cout, k, s, p, d, g = case
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape))
    return conv


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("isa", SUPPORTED)
def test_conv_weight_only_matches_dequantized(case, isa):
    conv = _conv(case, 0)
    qconv, _ = mq.quantize(conv, activations=None)
    assert isinstance(qconv, QuantizedConv2d)
    x = torch.randn(2, case[0], 9, 11)
    with at_isa(isa), torch.no_grad():
        outs = [qconv(x)]  # many pixels per channel: F.conv2d on the dequantized weight
        packed = kernel_args(qconv)
        if packed is not None:  # the packed fp32 x int8 kernel, whatever the size
            outs.append(qconv._packed_conv(x, *packed))
    ref = F.conv2d(x.double(), qconv.dequantized_weight().double(), qconv.bias.double(), conv.stride,
                   conv.padding, conv.dilation, conv.groups)
    assert len(outs) == (1 if case[6] == case[0] else 2)
    for y in outs:
        assert y.shape == ref.shape and y.is_contiguous()
        assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_conv_dynamic_sqnr(case):
    conv = _conv(case, 1)
    qconv, _ = mq.quantize(conv)
    assert qconv.activations == "dynamic"
    x = torch.randn(2, case[0], 10, 10)
    with torch.no_grad():
        assert _sqnr(conv(x), qconv(x)) >= 30.0
        if case[6] != case[0]:  # not depthwise: the packed path ran, equal across ISAs
            outs = []
            for level in GEMM_KERNELS:
                with at_isa(level):
                    outs.append(qconv(x))
            assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_conv_padding_modes_dtypes_and_persistence():
    conv = nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect").eval()
    qconv, _ = mq.quantize(conv)
    x = torch.randn(1, 4, 7, 7)
    with torch.no_grad():
        assert _sqnr(conv(x), qconv(x)) >= 30.0
        assert qconv(x.bfloat16()).dtype == torch.bfloat16
        rebuilt = QuantizedConv2d.from_saved(qconv.init_kwargs(), qconv.get_state_attrs(),
                                             dict(qconv.state_dict()))
        assert torch.equal(rebuilt(x), qconv(x))


@pytest.mark.parametrize("case", [c for c in CASES if c[6] != c[0]], ids=[str(c) for c in CASES if c[6] != c[0]])
@pytest.mark.parametrize("isa", GEMM_KERNELS)
def test_conv_dynamic_bit_exact_vs_reference(case, isa):
    """Per-image int8 activations, int8 im2col (zero padding exact), integer GEMM: the pure-torch twin's bits."""
    conv = _conv(case, 2)
    for symmetric in (True, False):
        qconv, _ = mq.quantize(conv, symmetric=symmetric)
        x = torch.randn(3, case[0], 8, 9)
        x[1] = 0  # an all-zero image
        with at_isa(isa), torch.no_grad():  # the C kernels whatever the shape (short reductions run F.conv2d)
            packed = kernel_args(qconv)
            y = qconv(x) if packed is None else qconv._packed_conv(x, *packed)
        ref = reference.conv2d_int8(x, qconv.quantized_weight().qdata, qconv.weight_scale, qconv.weight_zero_point, qconv.bias,
                                    conv.stride, conv.padding, conv.dilation, conv.groups)
        assert torch.equal(y, ref)


def test_weight_only_conv_picks_the_packed_kernel_for_few_pixels():
    conv = nn.Conv2d(32, 256, 3, padding=1).eval()  # 73728 weights: past SMALL_WEIGHT_ELEMENTS
    qconv, _ = mq.quantize(conv, activations=None)
    # 1, 16 and 256 output pixels: the packed kernel for one (the direct kernel's per-call panels would
    # cost more than the pixel's work), the direct one from FILL_ELEMENTS_PER_PIXEL, neither for many
    one, small, big = torch.randn(1, 32, 1, 1), torch.randn(1, 32, 4, 4), torch.randn(1, 32, 16, 16)
    assert qconv._packed_pays(one) and not qconv._packed_pays(big)
    fits = qconv._direct_fits(small)
    assert fits == (kernels.SETTINGS.isa != "scalar") and qconv._packed_pays(small) != fits
    with torch.no_grad():
        for x in (one, small, big):
            ref = F.conv2d(x.double(), qconv.dequantized_weight().double(), qconv.bias.double(), padding=1)
            assert torch.allclose(qconv(x).double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_weight_only_grouped_conv_counts_few_pixels_per_group():
    """The packed kernel runs a GEMM (and a Python call) a group: RegNet's 440 channels in 55 groups of 8
    on 4 x 4 took the packed route (16 pixels x 8 <= 440 outputs) at 0.21x fp32's speed; per group (8
    outputs) they are many pixels, F.conv2d's."""
    grouped, _ = mq.quantize(nn.Conv2d(440, 440, 3, padding=1, groups=55).eval(), activations=None)
    plain, _ = mq.quantize(nn.Conv2d(440, 440, 1).eval(), activations=None)
    x = torch.randn(1, 440, 4, 4)
    assert not grouped._packed_pays(x)
    assert plain._packed_pays(x)  # one group: 16 x 8 <= 440; a plain 1x1 conv: one GEMM, never the panels filled
    with torch.no_grad():
        ref = F.conv2d(x.double(), grouped.dequantized_weight().double(), grouped.bias.double(), padding=1, groups=55)
        assert torch.allclose(grouped(x).double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_weight_only_conv_of_a_weight_past_fill_max_keeps_the_packed_kernel(monkeypatch):
    """direct_conv.FILL_MAX_ELEMENTS: a weight of that many elements or more takes the packed kernel at
    few pixels instead of the direct kernel's panels filled per call; under it the direct kernel, as before."""
    from mono_quant.kernels import direct_conv
    isa = kernels.SETTINGS.isa
    conv = nn.Conv2d(64, 512, 3, padding=1).eval()  # 294912 weights
    qconv, _ = mq.quantize(conv, activations=None)
    x = torch.randn(2, 64, 4, 4)  # 32 output pixels: few, for 512 channels
    monkeypatch.setitem(direct_conv.FILL_MAX_ELEMENTS, isa, 1 << 62)
    fits = qconv._direct_fits(x)
    assert fits == (isa != "scalar") and qconv._packed_pays(x) != fits
    monkeypatch.setitem(direct_conv.FILL_MAX_ELEMENTS, isa, qconv.weight_numel())
    assert qconv._packed_pays(x)
    monkeypatch.setitem(direct_conv.FILL_MAX_ELEMENTS, isa, qconv.weight_numel() + 1)
    assert qconv._packed_pays(x) != fits
    from mono_quant.modules import conv as conv_module
    ref = F.conv2d(x.double(), qconv.dequantized_weight().double(), qconv.bias.double(), padding=1)
    for limit, route in ((1 << 62, "direct" if fits else "packed"), (0, "packed")):
        monkeypatch.setitem(direct_conv.FILL_MAX_ELEMENTS, isa, limit)
        layer, _ = mq.quantize(conv, activations=None)  # (a new layer: a route is kept per layer)
        with torch.no_grad():
            y = layer(x)
        assert conv_module._ROUTES[layer][5] == route
        assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("kernel,padding,dilation", [
    ((2 ** 62 + 1, 4), (2 ** 61, 0), (1, 1)),  # kernel area would wrap int64 to a small k
    ((2 ** 62 + 1, 4), (0, 0), (4, 1)),
    ((3, 3), (0, 0), (2 ** 63 - 1, 1)),  # dilation * (kernel - 1) would wrap negative
])
def test_conv2d_int8_rejects_sizes_that_would_overflow(kernel, padding, dilation):
    import numpy as np

    n = 16
    packed, sums, m128 = _C.pack_int8(np.ones((n, 4), np.int8))
    x = np.ones((1, 1, 4, 4), np.float32)
    with pytest.raises((ValueError, OverflowError)):
        _C.conv2d_int8(x, packed, sums, np.ones(n, np.float32), np.zeros(n, np.int32), None, n, m128,
                       kernel, (1, 1), padding, dilation, 1)


@pytest.mark.parametrize("isa", GEMM_KERNELS)
def test_conv_dynamic_row_blocks_bit_exact(isa):
    """A 3x3 conv with 64 input channels (kp = 576) over 2 x 16 x 16 pixels: 512 im2col
    rows, taken by linear.c in L2-sized blocks of 200 under each of the 3 panels."""
    torch.manual_seed(9)
    conv = nn.Conv2d(64, 40, 3, padding=1).eval()
    qconv, _ = mq.quantize(conv, symmetric=False)
    x = torch.randn(2, 64, 16, 16)
    with at_isa(isa), torch.no_grad():
        y = qconv(x)
    ref = reference.conv2d_int8(x, qconv.quantized_weight().qdata, qconv.weight_scale, qconv.weight_zero_point,
                                qconv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    assert torch.equal(y, ref)


@pytest.mark.parametrize("shape", [(3, 40, 3, 1, 1, 9, 1), (8, 33, 3, 2, 1, 13, 1), (16, 64, 1, 1, 0, 7, 2),
                                   (12, 36, 3, 1, 1, 6, 3)], ids=str)
@pytest.mark.parametrize("threads", [1, 2])
def test_conv_nchw_output_is_the_rows_transposed(isa, shape, threads):
    """nchw=True writes exactly the NHWC rows' values, transposed in C (tails of the 32x32 tiles)."""
    cin, cout, k, stride, pad, size, groups = shape
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups).eval()
    qconv = mq.quantize(conv).model
    x = torch.randn(3, cin, size, size)
    _, _, whole = kernel_args(qconv)
    geometry = ((k, k), (stride, stride), (pad, pad), (1, 1), groups)
    rows = _C.conv2d_int8(x.numpy(), *whole, *geometry, nthreads=threads)
    nchw = _C.conv2d_int8(x.numpy(), *whole, *geometry, nthreads=threads, nchw=True)
    out = (size + 2 * pad - k) // stride + 1
    want = rows.reshape(3, out, out, cout).transpose(0, 3, 1, 2)
    assert nchw.shape == (3, cout, out, out) and nchw.flags.c_contiguous
    assert np.array_equal(nchw, want)
