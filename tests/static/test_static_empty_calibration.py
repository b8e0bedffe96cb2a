"""Empty calibration data is a ConfigError saying what to pass; it was a RuntimeError in the
calibrator's terms ("no statistics: feed() calibration data first ... FusedFloat")."""
import pytest
import torch
from torch import nn

import mono_quant as mq
from static_helpers import DataDependent


@pytest.mark.parametrize("model", [nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8)), DataDependent()],
                         ids=["graph", "per_layer_fallback"])
@pytest.mark.parametrize("empty", [[], torch.empty(0, 16), iter(())], ids=["list", "tensor", "iterator"])
def test_empty_calibration_says_what_to_pass(model, empty):
    with pytest.raises(mq.ConfigError, match="calibration= gave no samples.*pass inputs the model runs on"):
        mq.quantize(model.eval(), "int8", activations="static", calibration=empty)
