"""Static int8 layers called with the wrong input width or channel count: a ValueError naming the
layer's in_features / in_channels and the input's, as the float layer refuses it (was a reshape
error, or the C kernel's 'packed must have N bytes'), on the layer, the one-call program and the
per-layer fallback alike."""
import re
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.calibration import CalibrationWarning
from mono_quant.static.modules import StaticConv2d, StaticLinear

from static_helpers import DataDependent


def _static(model, calib):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return mq.quantize(model, activations="static", calibration=calib).model


@pytest.mark.parametrize("shape", [(4, 12), (2, 3, 20), (4, 32), (12,)])
def test_static_linear_names_in_features_and_the_width(shape):
    torch.manual_seed(0)
    layer = StaticLinear.from_float(nn.Linear(16, 8), None, 0.05, None, False)
    shown = re.escape(str(tuple(shape)))
    with pytest.raises(ValueError, match=rf"in_features=16 .*last dimension {shape[-1]} \(shape {shown}\)"):
        layer(torch.randn(*shape))
    assert layer(torch.randn(2, 3, 16)).shape == (2, 3, 8)  # (leading dimensions kept, as nn.Linear)
    int8_in = StaticLinear.from_float(nn.Linear(16, 8), None, 0.05, 0.1, True)
    with pytest.raises(ValueError, match="in_features=16 .*last dimension 12"):
        int8_in(torch.zeros(4, 12, dtype=torch.int8))


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 8, 3), nn.Conv2d(4, 4, 3, groups=4)], ids=["dense", "depthwise"])
def test_static_conv_names_in_channels_and_the_input(conv):
    layer = StaticConv2d.from_float(conv, None, 0.05, None, False)
    c = conv.in_channels
    with pytest.raises(ValueError, match=rf"in_channels={c}, got {c + 1} channels \(shape \(1, {c + 1}, 8, 8\)\)"):
        layer(torch.randn(1, c + 1, 8, 8))
    with pytest.raises(ValueError, match=r"4-D \[batch, channels, height, width\] input, got shape .*unsqueeze"):
        layer(torch.randn(c, 8, 8))
    int8_in = StaticConv2d.from_float(conv, None, 0.05, None, True)
    with pytest.raises(ValueError, match=rf"\[batch, height, width, channels\] int8 .*in_channels={c}, got {c + 1}"):
        int8_in(torch.zeros(1, 8, 8, c + 1, dtype=torch.int8))


def test_the_one_call_program_names_the_first_layer():
    linear = _static(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)), [torch.randn(4, 16)])
    with pytest.raises(ValueError, match=r"layer '_0': StaticLinear\(16, 32\) .*in_features=16.*last dimension 12"):
        linear(torch.randn(4, 12))
    assert linear._compiled  # (it ran as one C call: the check is the program's)
    conv = _static(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)), [torch.randn(2, 3, 10, 10)])
    with pytest.raises(ValueError, match=r"layer '_0': StaticConv2d\(3, 8\) .*in_channels=3, got 4 channels"):
        conv(torch.randn(2, 4, 10, 10))
    conv.run_as_program = False  # the eager graph, layer by layer: the same message, naming the layer too
    with pytest.raises(ValueError, match=r"layer '_0': StaticConv2d\(3, 8\) .*in_channels=3, got 4 channels"):
        conv(torch.randn(2, 4, 10, 10))


def test_the_eager_graph_names_the_layer_that_refused():
    model = _static(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)), [torch.randn(4, 16)])
    model.run_as_program = False
    with pytest.raises(ValueError, match=r"^static int8 layer '_0': StaticLinear\(16, 32\) takes in_features=16 .*"
                                         r"last dimension 12"):
        model(torch.randn(4, 12))
    layer = model.layers["_0"]
    with pytest.raises(ValueError, match=r"^StaticLinear\(16, 32\)"):  # the layer on its own: no name to give
        layer(torch.randn(4, 12))


def test_per_layer_fallback_too():
    model = _static(DataDependent().eval(), [torch.randn(4, 16)])
    with pytest.raises(ValueError, match=r"^static int8 layer 'fc': StaticLinear\(16, 8\) .*in_features=16 .*"
                                         r"last dimension 20"):
        model(torch.randn(4, 20))


def test_per_layer_fallback_loaded_from_a_file_names_the_layer(tmp_path):
    model = _static(DataDependent().eval(), [torch.randn(4, 16)])
    path = tmp_path / "per_layer.mq.safetensors"
    mq.save(model, path)
    loaded = mq.load(path, model=DataDependent())
    with pytest.raises(ValueError, match=r"^static int8 layer 'fc': .*last dimension 20"):
        loaded(torch.randn(4, 20))
