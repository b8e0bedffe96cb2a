"""LargerModelWarning names the layer that grew most, with its shape: a narrow layer of any size
grows (packed int8 pads output channels to 16: a Linear(300000, 4) took as many bytes as fp32),
and the warning used to blame the smallest layer as "too small" (e.g. a 64x64 layer beside it).
Such a layer now stays float unless named exactly in include (narrow.py): these tests name it."""
import warnings

import pytest
from torch import nn

import mono_quant as mq
from mono_quant.strictness import LargerModelWarning


class RegressionHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(64, 64)
        self.head = nn.Linear(20000, 1)  # 20000 weights, one output channel

    def forward(self, x):
        return self.head(x)


def test_the_layer_that_grew_is_named_with_what_to_do():
    with pytest.warns(LargerModelWarning) as record:
        mq.quantize(RegressionHead(), "int8", include=["body", "head"])
    message = str(record[0].message)
    assert "'head' (1x20000)" in message and "pads output channels" in message, message
    assert "exclude=['head']" in message, message
    with warnings.catch_warnings():
        warnings.simplefilter("error", LargerModelWarning)
        mq.quantize(RegressionHead(), "int8", exclude=["head"])  # the remedy it names


def test_a_root_layer_is_named_without_an_exclude_that_cannot_work():
    with pytest.warns(LargerModelWarning) as record:
        mq.quantize(nn.Linear(2, 16))  # 16 outputs: not narrow, yet 32 weights grow with their scales
    message = str(record[0].message)
    assert "'<root>' (16x2)" in message and "exclude=" not in message and "min_weight_numel=" in message, message


def test_a_weight_held_as_a_plain_tensor_attribute_counts_in_the_float_model():
    """A Linear whose weight is a plain tensor attribute (not a Parameter, not a buffer): its bytes
    were left out of model_bytes_before, so a model that shrank warned that it grew."""
    import torch

    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    weight = model[0].weight.detach().clone()
    del model[0].weight
    model[0].weight = weight
    with warnings.catch_warnings():
        warnings.simplefilter("error", LargerModelWarning)
        result = mq.quantize(model)
    assert [layer.name for layer in result.report.layers] == ["0", "1"]
    assert result.report.model_bytes_before == 2 * (64 * 64 + 64) * 4
    assert isinstance(model[0].weight, torch.Tensor) and not isinstance(model[0].weight, nn.Parameter)
