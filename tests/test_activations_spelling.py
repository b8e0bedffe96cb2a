"""activations= is case-insensitive like dtype= ("INT8" works): "Dynamic" was a ConfigError."""
import pytest
from torch import nn

import mono_quant as mq


@pytest.mark.parametrize("spelling,expected", [("Dynamic", "dynamic"), (" DYNAMIC ", "dynamic"),
                                               ("None", None), ("Weight_Only", None)])
def test_activation_modes_in_any_case(spelling, expected):
    assert mq.quantize(nn.Linear(64, 64), "int8", activations=spelling).config.activations == expected


def test_static_in_any_case_still_needs_calibration():
    with pytest.raises(mq.ConfigError, match="activations='static' needs calibration="):
        mq.quantize(nn.Linear(64, 64), "int8", activations="Static")


def test_unknown_modes_are_still_errors():
    with pytest.raises(mq.ConfigError, match="activations must be 'dynamic', 'static' or None"):
        mq.quantize(nn.Linear(64, 64), "int8", activations="dynamik")
