"""A 1x1 conv on 1x1 images (squeeze-excitation blocks: RegNet, EfficientNet, MobileNetV3) is a
Linear on the images' channel vectors: the weight-only packed route takes the NCHW input as its
rows (a view, no transpose).  Every format and layout gives torch's conv on the layer's weight.  A strided
1x1 conv's rows are the sliced image's pixels (no im2col)."""
import pytest
import torch
from torch import nn

import mono_quant as mq
from conv_and_linear import weight_only_conv_and_linear


@pytest.mark.parametrize("dtype, kwargs", [("int8", {"activations": None}), ("int8", {}), ("fp16", {}),
                                           ("int4", {}), ("uint8", {})])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_one_pixel_1x1_conv_is_the_dequantized_conv(dtype, kwargs, batch):
    torch.manual_seed(0)
    conv = nn.Conv2d(26, 208, 1).eval()
    q = mq.quantize(nn.Sequential(conv), dtype=dtype, **kwargs).model[0]
    x = torch.randn(batch, 26, 1, 1)
    wide = torch.randn(batch, 26, 3, 2)
    inputs = {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
              "a slice": wide[:, :, 1:2, :1]}
    with torch.no_grad():
        want = q(x)
        w = q.weight.float()
        ref = nn.functional.conv2d(x, w, q.bias.float())
        tol = 5e-2 if dtype == "int4" or (dtype == "int8" and not kwargs) else 1e-4  # (int8 activations: looser)
        assert torch.allclose(want, ref, rtol=tol, atol=tol)
        for name, xi in inputs.items():
            xi_ref = xi if name != "a slice" else xi.contiguous()
            y = q(xi)
            assert y.shape == (batch, 208, 1, 1), name
            assert torch.equal(y, q(xi_ref.contiguous())), name  # the same rows, the same bits
            assert torch.allclose(y, nn.functional.conv2d(xi_ref, w, q.bias.float()), rtol=tol, atol=tol), name


@pytest.mark.parametrize("cin, cout, stride", [(26, 208, 1), (110, 440, 1), (440, 110, 2), (64, 130, 3)])
def test_a_weight_only_one_pixel_conv_is_its_linear_bit_for_bit(cin, cout, stride):
    # the one-pixel route (modules/conv.py _ONE_PIXEL) is the weight-only Linear's kernel call on the
    # images' channel vectors: the same bits as a quantized Linear of the same weight, torch's layout
    conv, qc, ql = weight_only_conv_and_linear(cin, cout, stride, seed=1)
    x = torch.randn(4, cin, 1, 1)
    nhwc = x.clone().as_strided(x.shape, (cin, 1, cin, cin))  # (channels_last strides: .contiguous() keeps NCHW's)
    with torch.no_grad():
        for xi in (x, nhwc, x[1:2], x[::2]):  # (x[::2]: a batch step, not contiguous)
            y = qc(xi)
            assert torch.equal(y.view(xi.shape[0], cout), ql(xi.reshape(xi.shape[0], cin))), xi.stride()
            assert y.stride() == conv(xi).stride(), xi.stride()  # the layout torch's conv gives
        qc.bias = nn.Parameter(qc.bias + 1)  # a replaced bias is seen on the next call (the route's stamp)
        assert torch.allclose(qc(x).view(4, cout), ql(x.view(4, cin)) + 1, rtol=0, atol=1e-5)


@pytest.mark.parametrize("stride", [2, 3, (2, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_strided_weight_only_1x1_conv_is_the_1x1_on_every_s_th_pixel(stride, channels_last):
    # the packed route takes a strided 1x1 conv (a projection shortcut) as a 1x1 on the sliced image, not
    # through torch's im2col: the same rows, so the bits of the stride-1 layer on x[:, :, ::sh, ::sw]
    from mono_quant.kernels.settings import SETTINGS
    from mono_quant.modules import conv as C
    torch.manual_seed(2)
    strided = nn.Conv2d(64, 440, 1, stride=stride).eval()
    plain = nn.Conv2d(64, 440, 1).eval()
    plain.load_state_dict(strided.state_dict())
    qs = mq.quantize(nn.Sequential(strided), dtype="int8", activations=None).model[0]
    qp = mq.quantize(nn.Sequential(plain), dtype="int8", activations=None).model[0]
    x = torch.randn(1, 64, 7, 8)  # (at most 440 / 8 output pixels: the packed route, not torch's conv)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    with torch.no_grad(), SETTINGS.for_tests(isa="scalar"):  # (no direct kernel there: the packed route)
        y = qs(x)
        assert C._ROUTES[qs][5] == C._PACKED
        assert torch.equal(y, qp(x[:, :, ::sh, ::sw].contiguous())), stride
        assert y.stride() == strided(x).stride()  # torch's layout
        assert torch.allclose(y, nn.functional.conv2d(x, qs.weight.float(), qs.bias, stride), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_traced_one_pixel_conv_gives_eagers_bits_and_strides(stride):
    # the packed op (kernels/torch_library.py) wrote a one-pixel result with the permuted strides
    # (C, 1, C, C) where eager and torch's conv give NCHW's (C, 1, 1, 1)
    torch.manual_seed(3)
    q = mq.quantize(nn.Sequential(nn.Conv2d(110, 440, 1, stride=stride)), dtype="int8",
                    activations=None).model.eval()
    x = torch.randn(2, 110, 1, 1)
    with torch.no_grad():
        want = q(x)
        traced = torch.jit.trace(q, x)
        for name, y in (("jit.trace", traced(x)), ("export", torch.export.export(q, (x,)).module()(x))):
            assert torch.equal(y, want), name
            assert y.stride() == want.stride() == (440, 1, 1, 1), name
