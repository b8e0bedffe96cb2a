"""Empty calibration data is a ConfigError saying what to pass; it was a RuntimeError in the
calibrator's terms ("no statistics: feed() calibration data first ... FusedFloat")."""
import pytest
import torch
from torch import nn

import mono_quant as mq


class DataDependent(nn.Module):
    """fx can't trace its `if`: the per-layer fallback calibrates it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        if x.sum() > -1e9:
            x = x + 0
        return self.fc(x)


@pytest.mark.parametrize("model", [nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8)), DataDependent()],
                         ids=["graph", "per_layer_fallback"])
@pytest.mark.parametrize("empty", [[], torch.empty(0, 16), iter(())], ids=["list", "tensor", "iterator"])
def test_empty_calibration_says_what_to_pass(model, empty):
    with pytest.raises(mq.ConfigError, match="calibration= gave no samples.*pass inputs the model runs on"):
        mq.quantize(model.eval(), "int8", activations="static", calibration=empty)
