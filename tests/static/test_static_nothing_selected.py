"""Static int8 with no Conv2d / Linear left to quantize (include=[], min_weight_numel above every
layer, a model without such layers, a static model quantized again) gives the float copy and a
NothingQuantizedWarning with the reasons, as dynamic int8 does; it raised the calibrator's
"no statistics: feed() calibration data first ... FusedFloat".  A static int8 layer counts as
quantized already for every later quantize() call."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.strictness import NothingQuantizedWarning
from static_helpers import DataDependent

CAL = [torch.randn(128, 16)]


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8)).eval()


def _static(model, data=CAL, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(model, "int8", activations="static", calibration=data, **kw)


@pytest.mark.parametrize("kw,reason", [({"include": []}, "include is empty"),
                                       ({"min_weight_numel": 10 ** 6}, "too small")])
def test_nothing_selected_gives_the_float_copy_with_reasons(kw, reason):
    model = _mlp()
    with pytest.warns(NothingQuantizedWarning, match=f"nothing was quantized.*{reason}"):
        result = mq.quantize(model, "int8", activations="static", calibration=CAL, **kw)
    assert [s.name for s in result.skipped] == ["0", "2"]
    assert all(reason in s.reason for s in result.skipped)
    assert result.model is not model
    x = torch.randn(3, 16)
    assert torch.equal(result.model(x), model(x))
    assert result.report.capture == "none" and "0" in str(result.report)


def test_a_model_without_layers_warns():
    with pytest.warns(NothingQuantizedWarning, match="no layer mono-quant replaces"):
        result = mq.quantize(nn.Sequential(nn.ReLU()), "int8", activations="static", calibration=CAL)
    assert result.skipped == []


@pytest.mark.parametrize("model", [_mlp, lambda: DataDependent().eval()], ids=["fx", "per_layer"])
def test_a_static_model_quantized_again_is_kept_as_it_is(model):
    model = model()
    data = [torch.randn(16, 16)]
    first = _static(model, data)
    with pytest.warns(NothingQuantizedWarning, match="every layer mono-quant replaces is already quantized"):
        again = mq.quantize(first.model, "int8", activations="static", calibration=data)
    with pytest.warns(NothingQuantizedWarning, match="already quantized as static int8"):
        dynamic = mq.quantize(first.model, "int8")
    for result in (again, dynamic):
        assert result.skipped and all("already quantized as static int8" in s.reason for s in result.skipped)
        with torch.no_grad():
            assert torch.equal(result.model(data[0]), first.model(data[0]))


def test_float_layers_of_a_partly_static_model_are_still_quantized():
    # mixed precision: the static int8 layer is kept, the float one inside the static model quantized
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32)).eval()
    first = _static(model, include=["0"])
    second = mq.quantize(first.model, "int8")
    assert [s.name for s in second.skipped] == ["layers._0"]
    assert [r.name for r in second.report.layers] == ["layers._2"]


class KeywordCall(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(input=x)


def test_a_layer_called_by_keyword_stays_float_with_the_reason():
    model = KeywordCall().eval()
    with pytest.warns(NothingQuantizedWarning, match="took its input by keyword"):
        result = mq.quantize(model, "int8", activations="static", calibration=CAL)
    x = torch.randn(2, 16)
    assert torch.equal(result.model(x), model(x))
