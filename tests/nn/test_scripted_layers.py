"""A TorchScript layer stays float with a reason that says what to do instead."""
import warnings

import pytest

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


@pytest.mark.parametrize("make", [torch.jit.script, lambda m: torch.jit.trace(m, torch.randn(2, 8))])
@pytest.mark.parametrize("route", ["module", "state_dict_model", "static"])
def test_scripted_root_is_refused_with_what_to_do(make, route):
    model = make(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)))
    if route == "module":
        call = lambda: mq.quantize(model)  # noqa: E731
    elif route == "state_dict_model":
        call = lambda: mq.quantize(dict(model.state_dict()), model=model)  # noqa: E731
    else:
        call = lambda: mq.quantize(model, calibration=[torch.randn(2, 8)])  # noqa: E731
    with pytest.raises(TypeError, match="TorchScript module .*quantize the eager model"):
        call()
