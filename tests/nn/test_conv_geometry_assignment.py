"""Assigning stride / padding / dilation on a quantized conv, as model code does on the float one
(segmentation models' output-stride change): the forward runs the new geometry, as a layer
quantized with it does.  They were plain attributes: the repr changed, the output did not."""
import pytest
import torch
from torch import nn

import mono_quant as mq

FORMATS = [("int8", "dynamic"), ("int8", None), ("int4", None), ("fp16", None)]


def _quantized(conv, dtype, activations):
    return mq.quantize(nn.Sequential(conv), dtype, activations=activations, include=["0"]).model


@pytest.mark.parametrize("dtype,activations", FORMATS)
@pytest.mark.parametrize("channels", [(16, 32), (64, 128)])  # the direct route and the packed kernels
def test_conv2d_runs_an_assigned_geometry(dtype, activations, channels):
    torch.manual_seed(0)
    cin, cout = channels
    conv, x = nn.Conv2d(cin, cout, 3, stride=2, padding=1), torch.randn(1, cin, 16, 16)
    want = nn.Conv2d(cin, cout, 3, stride=1, padding=2, dilation=2)
    want.load_state_dict(conv.state_dict())
    q = _quantized(conv, dtype, activations)
    with torch.no_grad():
        q(x)  # the old geometry's route is kept by now
        q[0].stride, q[0].dilation, q[0].padding = (1, 1), 2, (2, 2)
        assert (q[0].stride, q[0].padding, q[0].dilation) == ((1, 1), (2, 2), (2, 2))
        assert "dilation=(2, 2)" in repr(q[0])
        assert torch.equal(q(x), _quantized(want, dtype, activations)(x))
        q[0].padding = "same"
        same = nn.Conv2d(cin, cout, 3, padding="same", dilation=2)
        same.load_state_dict(conv.state_dict())
        assert torch.equal(q(x), _quantized(same, dtype, activations)(x))


@pytest.mark.parametrize("dtype,activations", FORMATS)
def test_conv1d_runs_an_assigned_geometry(dtype, activations):
    torch.manual_seed(0)
    conv, x = nn.Conv1d(16, 32, 3, stride=2), torch.randn(2, 16, 40)
    want = nn.Conv1d(16, 32, 3, stride=1, padding=2, dilation=2)
    want.load_state_dict(conv.state_dict())
    q = _quantized(conv, dtype, activations)
    with torch.no_grad():
        q(x)
        q[0].stride, q[0].padding, q[0].dilation = 1, (2,), 2
        assert (q[0].stride, q[0].padding, q[0].dilation) == ((1,), (2,), (2,))
        assert torch.equal(q(x), _quantized(want, dtype, activations)(x))


def test_bad_geometry_is_refused_at_assignment():
    q = _quantized(nn.Conv2d(4, 8, 3, stride=2), "int8", "dynamic")
    for name, value in (("stride", 0), ("dilation", (1, 0)), ("padding", -1), ("padding", "full"), ("stride", 1.5)):
        with pytest.raises(ValueError, match=name):
            setattr(q[0], name, value)
    with pytest.raises(ValueError, match="strided"):
        q[0].padding = "same"
    c1 = _quantized(nn.Conv1d(4, 8, 3), "int8", "dynamic")
    with pytest.raises(ValueError, match="one integer"):
        c1[0].stride = (1, 2)
