"""An int4 conv of a weight past SMALL_WEIGHT_ELEMENTS on few output pixels (a classifier's end stages)
runs its im2col rows through the int4 Linear's call (QuantizedConv2d._int4_rows_conv): a dynamic
layer's rows in int8 per (row, group) as a Linear's, float32 with activations=None; the same bits as
that Linear call, eager, compiled and exported; many pixels, channels_last inputs and grouped convs
keep torch's conv of the dequantized weight."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.formats.int4_call import kept_int4_linear
from mono_quant.modules.conv import _ROUTES


def _quantized(conv, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(nn.Sequential(conv.eval()), "int4", **options).model[0]


def _route(q):
    memo = _ROUTES.get(q)
    return None if memo is None else memo[5]


def _rows_reference(q, x):
    """The int4 Linear call on torch's unfold rows, as NCHW."""
    rows = F.unfold(x, q.kernel_size2d, q.dilation2d, q.padding2d, q.stride2d)
    out = [(size + 2 * p - d * (k - 1) - 1) // s + 1 for size, k, s, p, d in
           zip(x.shape[2:], q.kernel_size2d, q.stride2d, q.padding2d, q.dilation2d)]
    y = kept_int4_linear(q, rows.transpose(1, 2).reshape(-1, rows.shape[1]).contiguous())
    return y.reshape(x.shape[0], out[0] * out[1], -1).transpose(1, 2).reshape(x.shape[0], -1, *out)


@pytest.mark.parametrize("cin, cout, k, stride, size, batch", [(256, 512, 3, 1, 4, 1), (256, 512, 3, 2, 8, 1),
                                                              (512, 1024, 1, 1, 4, 2), (128, 768, 3, 1, 3, 3)])
def test_few_pixels_take_the_int4_linear_on_im2col_rows(cin, cout, k, stride, size, batch):
    torch.manual_seed(cin + k)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)
    q = _quantized(conv)
    x = torch.randn(batch, cin, size, size)
    with torch.no_grad():
        y = q(x)
        assert _route(q) == "int4 rows"
        assert torch.equal(y, _rows_reference(q, x))
        exact = F.conv2d(x, q.dequantized_weight(torch.float32), q.bias, stride, k // 2)
        torch.testing.assert_close(y, exact, atol=0.02 * float(exact.abs().max()), rtol=0)  # int8 activations
        assert torch.equal(torch.compile(q, backend="eager")(x), y)
        assert torch.equal(torch.export.export(q, (x,)).module()(x), y)
    xg = x.clone().requires_grad_()
    q(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_weight_only_layers_keep_float_activations():
    torch.manual_seed(1)
    conv = nn.Conv2d(256, 512, 3, padding=1)
    q = _quantized(conv, activations=None)
    x = torch.randn(1, 256, 4, 4)
    with torch.no_grad():
        y = q(x)
        assert _route(q) == "int4 rows"
        exact = F.conv2d(x, q.dequantized_weight(torch.float32), q.bias, 1, 1)
        torch.testing.assert_close(y, exact, atol=1e-5, rtol=1e-5)


def test_many_pixels_and_groups_keep_torchs_conv_channels_last_takes_the_same_rows():
    torch.manual_seed(2)
    q = _quantized(nn.Conv2d(256, 512, 3, padding=1))
    grouped = _quantized(nn.Conv2d(256, 512, 3, padding=1, groups=2))
    with torch.no_grad():
        q(torch.randn(1, 256, 16, 16))  # 256 pixels x 8 > 512 outputs
        assert _route(q) != "int4 rows"
        x = torch.randn(1, 256, 4, 4)
        nchw = q(x)
        assert _route(q) == "int4 rows"
        last_x = x.contiguous(memory_format=torch.channels_last)
        last = q(last_x)  # the same rows, so the same bits, in torch's layout for such an input
        assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, nchw)
        assert torch.equal(torch.compile(q, backend="eager")(last_x), last)
        xg = x.clone().requires_grad_()  # under no_grad a grad-carrying x is a plain input
        assert torch.equal(q(xg), nchw)
        grouped(x)
        assert _route(grouped) != "int4 rows"


def test_dynamic_shapes_and_jit_trace_decide_the_rule_as_eager():
    """Export with a dynamic batch decides the rule per call (torch.cond): the rows route at batch 1 and 2
    (16 / 32 pixels x 8 <= 512), torch's conv at batch 8 (where eager may run the direct kernel: within
    rounding then, docs/ecosystem.md); jit.trace takes the example's route."""
    torch.manual_seed(3)
    q = _quantized(nn.Conv2d(256, 512, 3, padding=1))
    example = torch.randn(2, 256, 4, 4)
    batch = torch.export.Dim("batch", min=1, max=16)
    with torch.no_grad():
        program = torch.export.export(q, (example,), dynamic_shapes=({0: batch},)).module()
        for n in (1, 2, 8):
            x = torch.randn(n, 256, 4, 4)
            y = q(x)
            if _route(q) == "direct":  # (AVX-512: eager's direct kernel, the program's torch conv on the same weight)
                torch.testing.assert_close(program(x), y, rtol=1e-5, atol=1e-5)
            else:
                assert torch.equal(program(x), y), n
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(q, example)
        assert torch.equal(traced(example), q(example))


@pytest.mark.parametrize("layer, shape", [((208, 440, 1, 2, 0), (2, 208, 8, 8)), ((256, 512, 3, 1, 1), (1, 256, 4, 4)),
                                          ((512, 512, 1, 1, 0), (1, 512, 4, 4))], ids=["strided-1x1", "3x3", "1x1"])
def test_traced_and_autograd_rows_give_eagers_nchw_strides(layer, shape):
    """The traced rows route (jit.trace, export, autograd) gave channels_last strides for a contiguous x
    (its transposed rows), where eager and torch's conv give NCHW: ``y.view(batch, -1)`` then raised."""
    cin, cout, k, stride, padding = layer
    torch.manual_seed(5)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding).eval()
    q = _quantized(conv)
    x = torch.randn(*shape)
    with torch.no_grad():
        eager = q(x)
        assert _route(q) == "int4 rows"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(q, (x,), check_trace=False)(x)
        exported = torch.export.export(q, (x,)).module()(x)
    graded = q(x.clone().requires_grad_(True))
    for y in (eager, traced, exported, graded):
        assert y.stride() == conv(x).stride()
        torch.testing.assert_close(y.detach(), eager, rtol=0, atol=0)
