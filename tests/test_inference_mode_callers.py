"""quantize() and load() called under torch.inference_mode() give a model autograd can run through:
they made inference tensors, and a later backward (adapters, autograd to the input) failed with
"Inference tensors cannot be saved for backward"."""
import inspect

import pytest
import torch
from torch import nn

import mono_quant as mq


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def _backward_reaches_the_input(model):
    x = torch.randn(2, 32, requires_grad=True)
    model(x).sum().backward()
    return x.grad is not None and float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_quantize_and_load_under_inference_mode(dtype, tmp_path):
    model = _model()
    with torch.inference_mode():
        result = mq.quantize(model, dtype)
        assert torch.is_inference_mode_enabled()  # the caller's mode is restored
    assert not any(t.is_inference() for t in result.model.state_dict().values())
    assert _backward_reaches_the_input(result.model)
    path = mq.save(result, tmp_path / "m.safetensors")
    with torch.inference_mode():
        loaded = mq.load(path, model=_model())
    assert not any(t.is_inference() for t in loaded.state_dict().values())
    assert _backward_reaches_the_input(loaded)


def test_the_public_signatures_are_kept():
    assert "model_or_state_dict" in inspect.signature(mq.quantize).parameters
    assert list(inspect.signature(mq.load).parameters) == ["path", "model"]
    assert mq.quantize.__doc__ and mq.load.__doc__


def test_warnings_under_inference_mode_name_the_callers_line():
    from mono_quant.strictness import NothingQuantizedWarning
    with torch.inference_mode(), pytest.warns(NothingQuantizedWarning) as record:
        mq.quantize(nn.Sequential(nn.ReLU()), "int8")
    assert {w.filename for w in record} == {__file__}
