"""What a static layer's input scale is taken from: the tensor it gets, even when an op the
calibrator doesn't hook changed it in place after its producer was observed, or when a shared
layer also takes its own output; and (X, Y) given as the calibration data is refused."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.calibration import CalibrationWarning


class _ConvActConv(nn.Module):
    def __init__(self, inplace):
        super().__init__()
        self.c1, self.act, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Hardswish(inplace), nn.Conv2d(16, 8, 3)
        with torch.no_grad():
            self.c1.bias.fill_(-2.0)  # mostly negative before the activation: its output range is much narrower

    def forward(self, x):
        return self.c2(self.act(self.c1(x)))


def _static(model, calibration):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return mq.quantize(model, "int8", activations="static", calibration=calibration)


def test_an_in_place_activation_gives_the_next_layer_the_scale_of_what_it_gets():
    """MobileNetV3's Hardswish(inplace=True): the next conv took the conv's pre-activation range
    (in_scale 12x too wide, 27.7 dB against 42.1 dB out of place)."""
    torch.manual_seed(0)
    in_place = _ConvActConv(True).eval()
    out_of_place = _ConvActConv(False).eval()
    out_of_place.load_state_dict(in_place.state_dict())
    calib = torch.randn(64, 3, 8, 8)
    a, b = _static(in_place, calib).model, _static(out_of_place, calib).model
    assert a.layers["c2"].in_scale == b.layers["c2"].in_scale
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(a(x), b(x))


def test_calibration_given_as_inputs_and_targets_is_refused():
    model = _ConvActConv(False).eval()
    x = torch.randn(8, 3, 8, 8)
    with pytest.raises(TypeError, match="is a tuple"):
        _static(model, (x, torch.zeros(8, dtype=torch.long)))
    assert _static(model, [(x, torch.zeros(8, dtype=torch.long))]).model is not None
