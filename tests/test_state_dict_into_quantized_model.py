"""quantize(state_dict, model=m) with ``m`` partly quantized: AlreadyQuantizedError saying what to
pass (it was a KeyError listing the quantized layer's buffers as missing keys)."""
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.errors import AlreadyQuantizedError


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_partly_quantized_model_is_refused(dtype):
    model = _model()
    partly = mq.quantize(model, dtype, include=["2"]).model
    sd = model.state_dict()
    with pytest.raises(AlreadyQuantizedError, match=r"model= holds layers quantized already \('2' \(QuantizedLinear\)\)"
                       r".*float model"):
        mq.quantize(sd, "int8", model=partly)
    assert isinstance(partly[0], nn.Linear)  # untouched


def test_float_skeleton_still_works():
    model = _model()
    with torch.device("meta"):
        skeleton = _model()
    qmodel, skipped = mq.quantize(model.state_dict(), "int8", model=skeleton)
    x = torch.randn(2, 16)
    assert torch.allclose(qmodel(x), model(x), atol=0.05)
