"""save() of a quantized model's state_dict() is refused, saying to pass the model or the result: it
wrote a file no skeleton could load (missing keys ['0.weight'], unexpected ['0.weight_scale', ...])."""
import pytest
import torch
from torch import nn

import mono_quant as mq


def _model():
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int4"])
def test_state_dict_of_a_quantized_model_is_refused(dtype, tmp_path):
    result = mq.quantize(_model(), dtype)
    for sd in (result.state_dict(), result.model.state_dict()):
        with pytest.raises(TypeError, match="state_dict of a quantized model.*pass the quantized model or the "
                                            "QuantizationResult itself"):
            mq.save(sd, tmp_path / "q.safetensors")
    assert not (tmp_path / "q.safetensors").exists()
    path = mq.save(result.model, tmp_path / "q.safetensors")  # the way it names
    x = torch.randn(2, 64)
    assert torch.equal(mq.load(path, model=_model())(x), result.model(x))


def test_plain_and_quantized_state_dict_results_still_save(tmp_path):
    model = _model()
    mq.save(model.state_dict(), tmp_path / "float.safetensors")
    path = mq.save(mq.quantize(model.state_dict(), "int8"), tmp_path / "q.safetensors")
    x = torch.randn(2, 64)
    assert torch.equal(mq.load(path, model=_model())(x), mq.quantize(model, "int8").model(x))
