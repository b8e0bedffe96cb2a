"""A weight-only 1x1 conv at stride 1 on few pixels (a RegNet's or EfficientNet's late 1x1 convs) takes
the packed route's call kept per shape (modules/conv.py _POINTWISE: the NCHW pixels as rows, one GEMM,
NCHW out): the bits of a quantized Linear on the pixels' channel vectors, torch's layout, and
_packed_conv's own call for the inputs it does not take (channels_last, slices)."""
import pytest
import torch
from torch import nn

import mono_quant as mq
from conv_and_linear import weight_only_conv_and_linear
from mono_quant.modules import conv as C


@pytest.fixture
def torch_threads():
    previous = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(previous)


@pytest.mark.parametrize("cin, cout, batch, side", [(440, 440, 1, (4, 4)), (208, 440, 2, (4, 4)), (130, 600, 3, (3, 5)),
                                                    (600, 130, 1, (1, 2))])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_pointwise_conv_is_its_linear_on_the_pixels_bit_for_bit(cin, cout, batch, side, threads, torch_threads):
    conv, qc, ql = weight_only_conv_and_linear(cin, cout, seed=4)
    x = torch.randn(batch, cin, *side)
    wide = torch.randn(batch, cin, side[0], side[1] + 3)
    inputs = {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
              "a slice": wide[..., 1:side[1] + 1]}
    torch_threads(threads)  # (the kernels take torch's thread count)
    with torch.no_grad():
        for name, xi in inputs.items():
            y = qc(xi)
            assert C._ROUTES[qc][5] == C._POINTWISE, name  # (kept for the shape; the layout checked per call)
            rows = xi.permute(0, 2, 3, 1).reshape(-1, cin)
            want = ql(rows).view(batch, *side, cout).permute(0, 3, 1, 2)
            assert torch.equal(y, want), name
            assert y.stride() == conv(xi).stride(), name  # the layout torch's conv gives
            assert torch.allclose(y, nn.functional.conv2d(xi, qc.weight.float(), qc.bias), rtol=1e-4, atol=1e-4)
        before = qc(x)
        qc.bias = nn.Parameter(qc.bias + 1)  # a replaced bias is seen on the next call (the route's stamp)
        assert torch.allclose(qc(x), before + 1, rtol=0, atol=1e-5)


def test_other_1x1_convs_keep_their_routes():
    # dynamic int8, groups, padding, a stride: not this route (their own calls, or _packed_conv's)
    torch.manual_seed(5)
    x = torch.randn(1, 440, 4, 4)
    cases = {"dynamic": (nn.Conv2d(440, 440, 1), {}), "grouped": (nn.Conv2d(440, 440, 1, groups=2), {"activations": None}),
             "padded": (nn.Conv2d(440, 440, 1, padding=1), {"activations": None}),
             "strided": (nn.Conv2d(440, 440, 1, stride=2), {"activations": None})}
    with torch.no_grad():
        for name, (conv, kwargs) in cases.items():
            q = mq.quantize(nn.Sequential(conv.eval()), dtype="int8", **kwargs).model[0]
            y = q(x)
            assert C._ROUTES[q][5] != C._POINTWISE, name
            assert torch.allclose(y, conv(x), rtol=5e-2, atol=5e-2), name
