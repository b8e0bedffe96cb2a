"""Empty calibration data is a ConfigError saying what to pass; it was a RuntimeError in the
calibrator's terms ("no statistics: feed() calibration data first ... FusedFloat"); batches of
no rows were counted as one sample each (a model calibrated on nothing, 7 dB, with a warning of
"1 samples")."""
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.calibration.calibrator import CalibrationWarning
from static_helpers import DataDependent


@pytest.mark.parametrize("model", [nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8)), DataDependent()],
                         ids=["graph", "per_layer_fallback"])
@pytest.mark.parametrize("empty", [[], torch.empty(0, 16), iter(()), [torch.empty(0, 16)] * 3,
                                   [(torch.empty(0, 16), torch.empty(0))], [{"x": torch.empty(0, 16)}]],
                         ids=["list", "tensor", "iterator", "empty_batches", "empty_xy", "empty_dict"])
def test_empty_calibration_says_what_to_pass(model, empty):
    with pytest.raises(mq.ConfigError, match="calibration= gave no samples.*pass inputs the model runs on"):
        mq.quantize(model.eval(), "int8", activations="static", calibration=empty)


def test_empty_batches_among_others_are_not_counted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    with pytest.warns(CalibrationWarning, match="calibrated on 5 samples"):
        mq.quantize(model, "int8", activations="static", calibration=[torch.empty(0, 16), torch.randn(5, 16)])
