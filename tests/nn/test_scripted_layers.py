"""A TorchScript layer stays float with a reason that says what to do instead."""
import warnings

import torch
from torch import nn

import mono_quant as mq


def test_scripted_layer_says_to_quantize_the_eager_model():
    model = nn.Sequential(torch.jit.script(nn.Linear(8, 8)), nn.ReLU(), nn.Linear(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel, skipped = mq.quantize(model)
    assert [s.name for s in skipped] == ["0"]
    assert "TorchScript" in skipped[0].reason and "quantize the eager model" in skipped[0].reason
    assert type(qmodel[2]) is mq.QuantizedLinear
    x = torch.randn(2, 8)
    assert torch.equal(qmodel[0](x), model[0](x))
