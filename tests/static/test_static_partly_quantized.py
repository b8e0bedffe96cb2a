"""Static int8 of a model an earlier quantize() call partly quantized: the quantized layers stay as
they are and are listed in ``skipped`` (with their format), the float Conv2d / Linear layers are
quantized one by one (fx would trace into the quantized layers' own code), and the result saves
and loads back (into the partly quantized architecture) with the same outputs."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.errors import CheckpointError
from mono_quant.modules import QuantizedLinear
from mono_quant.static.fallback import PerLayerStatic

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 8)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _static(model, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(model, "int8", activations="static", calibration=data, **kw)


@pytest.mark.parametrize("dtype", ["int8", "fp16", "int4"])
def test_quantized_layers_are_listed_and_kept(dtype):
    torch.manual_seed(0)
    model = MLP().eval()
    data = torch.randn(64, 16)
    opts = {"group_size": None} if dtype == "int4" else {}
    partly = mq.quantize(model, dtype, include=["fc2"], **opts).model
    result = _static(partly, data)
    assert result.model.fc2 is not partly.fc2 and type(result.model.fc2) is type(partly.fc2)
    assert isinstance(result.model.fc1, PerLayerStatic) and isinstance(result.model.fc3, PerLayerStatic)
    listed = {s.name: s for s in result.skipped}
    assert listed["fc2"].type == type(partly.fc2).__name__
    assert listed["fc2"].reason.startswith(f"already quantized as {dtype}")
    assert "quantized already ('fc2')" in result.report.fallback_reason
    assert isinstance(partly.fc1, nn.Linear)  # the caller's model is untouched


def test_include_naming_a_quantized_layer_says_it_is_not_quantized_twice():
    torch.manual_seed(0)
    partly = mq.quantize(MLP().eval(), "int8", include=["fc2"]).model
    result = _static(partly, torch.randn(64, 16), include=["fc2", "fc3"])
    listed = {s.name: s.reason for s in result.skipped}
    assert "never quantized twice" in listed["fc2"]
    assert listed["fc1"] == "not matched by include"
    assert isinstance(result.model.fc3, PerLayerStatic)


def test_save_and_load_back(tmp_path):
    torch.manual_seed(0)
    model = MLP().eval()
    data = torch.randn(64, 16)
    partly = mq.quantize(model, "int8", include=["fc2"]).model
    result = _static(partly, data)
    path = mq.save(result, tmp_path / "m.mq")
    loaded = mq.load(path, model=partly)
    assert isinstance(loaded.fc2, QuantizedLinear)
    assert torch.equal(loaded(data[:4]), result.model(data[:4]))
    with pytest.raises(CheckpointError, match="fc2"):  # the float architecture lacks the quantized layer
        mq.load(path, model=model)


@pytest.mark.parametrize("dtype, stored", [("int8", "weight_packed"), ("int4", "weight_qdata"),
                                           ("fp16", r"weight \(float16\)")])
def test_loading_with_the_float_model_says_to_pass_the_partly_quantized_one(tmp_path, dtype, stored):
    """The float model where the file needs the partly quantized one: an error naming the quantized
    layers and what to pass (was "tensors disagree with the model: missing ['fc2.weight'], ...", or
    for fp16 a dtype mismatch of fc2.weight)."""
    torch.manual_seed(0)
    model = MLP().eval()
    data = torch.randn(64, 16)
    opts = {"group_size": None} if dtype == "int4" else {}
    partly = mq.quantize(model, dtype, include=["fc2"], **opts).model
    path = mq.save(_static(partly, data), tmp_path / "m.mq")
    with pytest.raises(CheckpointError, match=rf"layers \['fc2'\] are quantized in the file \('fc2': .*{stored}.*\) "
                                              r"but float in the model.*pass model= that partly quantized model"):
        mq.load(path, model=model)
    again = mq.quantize(model, dtype, include=["fc2"], **opts).model  # what the message suggests
    assert torch.equal(mq.load(path, model=again)(data[:4]), mq.load(path, model=partly)(data[:4]))
    with pytest.raises(CheckpointError, match=r"layer 'fc1': the model has QuantizedLinear there, the file a static "
                                              r"Linear; pass model= the architecture the file was saved from"):
        mq.load(path, model=mq.quantize(model, dtype, include=["fc1"], **opts).model)
