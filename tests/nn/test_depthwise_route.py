"""QuantizedConv2d's depthwise route (kernels.depthwise): a depthwise layer of every format runs the C
depthwise conv on its kept float32 weight (dequantized or widened) for float32 NCHW inputs at the SIMD
levels; its result is the kernel's on that weight (torch's conv up to float32 rounding), the same bits
eager, compiled, exported and with autograd; channels_last inputs, the scalar level, grouped convs
that are not depthwise and wide kernels past a batch of one keep torch's conv."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.kernels import depthwise
from mono_quant.modules.conv import _ROUTES

from conftest import SUPPORTED, at_isa

FORMATS = [("int8", {}), ("int8", {"activations": None}), ("uint8", {}), ("int4", {"group_size": 32}),
           ("fp16", {}), ("bf16", {})]
SIMD = [level for level in SUPPORTED if level in depthwise.LEVELS]


def _quantized(conv, dtype, options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(nn.Sequential(conv.eval()), dtype, **options).model[0]


def _route(q):
    memo = _ROUTES.get(q)
    return None if memo is None else memo[5]


def _expected(q, x):
    """The C kernel on the layer's dequantized weight and float32 bias."""
    w = q.dequantized_weight(torch.float32).contiguous()
    b = None if q.bias is None else q.bias.float().contiguous()
    return depthwise.depthwise_conv2d(x, w.numpy(), None if b is None else b.numpy(), q.stride2d, q.padding2d,
                                      q.dilation2d)


@pytest.mark.skipif(not SIMD, reason="no kernel level that runs the depthwise kernel")
@pytest.mark.parametrize("dtype, options", FORMATS, ids=["int8", "int8-wo", "uint8", "int4", "fp16", "bf16"])
@pytest.mark.parametrize("mult, stride, bias", [(1, 1, True), (2, 2, False), (1, 2, True)])
def test_every_format_takes_the_kernel_on_its_dequantized_weight(dtype, options, mult, stride, bias):
    torch.manual_seed(mult * 10 + stride)
    conv = nn.Conv2d(12, 12 * mult, 3, stride=stride, padding=1, groups=12, bias=bias)
    q = _quantized(conv, dtype, options)
    x = torch.randn(2, 12, 11, 9)
    with torch.no_grad():
        y = q(x)
    assert _route(q) == "depthwise"
    assert torch.equal(y, _expected(q, x))
    reference = F.conv2d(x, q.dequantized_weight(torch.float32), None if q.bias is None else q.bias.float(),
                         stride, 1, 1, 12)
    torch.testing.assert_close(y, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not SIMD, reason="no kernel level that runs the depthwise kernel")
@pytest.mark.parametrize("dtype, options", [FORMATS[0], FORMATS[4]], ids=["int8", "fp16"])
def test_compiled_exported_and_autograd_give_eagers_bits(dtype, options):
    torch.manual_seed(0)
    q = _quantized(nn.Conv2d(16, 16, 3, padding=1, groups=16), dtype, options)
    x = torch.randn(2, 16, 10, 10)
    with torch.no_grad():
        eager = q(x)
        compiled = torch.compile(q, backend="eager")(x)
        exported = torch.export.export(q, (x,)).module()(x)
    assert torch.equal(compiled, eager) and torch.equal(exported, eager)
    xg = x.clone().requires_grad_()
    y = q(xg)
    assert torch.equal(y.detach(), eager)
    y.square().sum().backward()
    xr = x.clone().requires_grad_()
    F.conv2d(xr, q.dequantized_weight(torch.float32), q.bias.float(), 1, 1, 1, 16).square().sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not SIMD, reason="no kernel level that runs the depthwise kernel")
def test_channels_last_inputs_keep_torchs_conv_and_layout():
    torch.manual_seed(1)
    q = _quantized(nn.Conv2d(8, 8, 3, padding=1, groups=8), "int8", {})
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        nchw = q(x)
        assert _route(q) == "depthwise"
        last = q(x.contiguous(memory_format=torch.channels_last))  # the same shape: the kept route, torch's conv
        fresh = _quantized(nn.Conv2d(8, 8, 3, padding=1, groups=8), "int8", {})
        fresh.load_state_dict(q.state_dict())
        first_last = fresh(x.contiguous(memory_format=torch.channels_last))
    for y in (last, first_last):
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, nchw, atol=1e-5, rtol=1e-5)
    # (the route is the layer's and the shape's, whatever the first call's layout: an NCHW call then takes the
    # kernel, as a compiled graph does)
    assert _route(fresh) == "depthwise"
    with torch.no_grad():
        assert torch.equal(fresh(x), nchw)


def test_the_scalar_level_grouped_convs_and_wide_kernels_keep_torchs_conv():
    torch.manual_seed(2)
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        if "scalar" in SUPPORTED:
            with at_isa("scalar"):
                q = _quantized(nn.Conv2d(8, 8, 3, padding=1, groups=8), "int8", {})
                q(x)
                assert _route(q) != "depthwise"
        grouped = _quantized(nn.Conv2d(8, 8, 3, padding=1, groups=4), "int8", {})
        grouped(x)
        assert _route(grouped) != "depthwise"
        if SIMD:
            wide = _quantized(nn.Conv2d(8, 8, 7, padding=3, groups=8), "int8", {})
            wide(x)  # 49 taps at batch 2: oneDNN's conv (kernels.depthwise.WIDE_TAPS)
            assert _route(wide) != "depthwise"
            y = wide(x[:1])
            assert _route(wide) == "depthwise"
            assert torch.equal(y, _expected(wide, x[:1]))


@pytest.mark.skipif(not SIMD, reason="no kernel level that runs the depthwise kernel")
def test_a_new_weight_reaches_the_next_call():
    torch.manual_seed(3)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    q = _quantized(conv, "int8", {})
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        q(x)
        other = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        q.load_state_dict(_quantized(other, "int8", {}).state_dict())
        assert torch.equal(q(x), _expected(q, x))
        torch.testing.assert_close(q(x), other(x), atol=0.05, rtol=0.05)
