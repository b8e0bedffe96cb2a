"""A 1x1 conv on 1x1 images (squeeze-excitation blocks: RegNet, EfficientNet, MobileNetV3) is a
Linear on the images' channel vectors: the weight-only packed route takes the NCHW input as its
rows (a view, no transpose).  Every format and layout gives torch's conv on the layer's weight."""
import pytest
import torch
from torch import nn

import mono_quant as mq


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
    torch.manual_seed(1)
    conv = nn.Conv2d(cin, cout, 1, stride=stride).eval()
    linear = nn.Linear(cin, cout).eval()
    with torch.no_grad():
        linear.weight.copy_(conv.weight.view(cout, cin))
        linear.bias.copy_(conv.bias)
    qc = mq.quantize(nn.Sequential(conv), dtype="int8", activations=None).model[0]
    ql = mq.quantize(nn.Sequential(linear), dtype="int8", activations=None).model[0]
    x = torch.randn(4, cin, 1, 1)
    with torch.no_grad():
        for xi in (x, x.contiguous(memory_format=torch.channels_last), x[1:2]):
            y = qc(xi)
            assert torch.equal(y.view(xi.shape[0], cout), ql(xi.reshape(xi.shape[0], cin))), xi.stride()
            assert y.stride() == conv(xi).stride(), xi.stride()  # the layout torch's conv gives
        qc.bias = nn.Parameter(qc.bias + 1)  # a replaced bias is seen on the next call (the route's stamp)
        assert torch.allclose(qc(x).view(4, cout), ql(x.view(4, cin)) + 1, rtol=0, atol=1e-5)
