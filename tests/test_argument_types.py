"""Arguments of the wrong type say what was wrong: quantize_weight(symmetric="no") gave symmetric
weights ("no" is truthy); quantize_checkpoint(model, ...) failed inside os.fspath."""
import pytest
import torch
from torch import nn

import mono_quant as mq


@pytest.mark.parametrize("symmetric", ["no", 1, None])
def test_quantize_weight_symmetric_must_be_a_bool(symmetric):
    with pytest.raises(TypeError, match="symmetric must be True or False"):
        mq.quantize_weight(torch.randn(4, 64), "int8", symmetric=symmetric)


def test_quantize_weight_symmetric_bools_still_work():
    assert mq.quantize_weight(torch.randn(4, 64), "int8", symmetric=True).symmetric is True
    assert mq.quantize_weight(torch.randn(4, 64), "int4", symmetric=False).symmetric is False


@pytest.mark.parametrize("src", [nn.Linear(4, 4), {"w": torch.ones(2)}], ids=["module", "state_dict"])
def test_quantize_checkpoint_in_memory_points_to_quantize(src, tmp_path):
    with pytest.raises(TypeError, match="takes file paths; src is a .*use mono_quant.quantize"):
        mq.quantize_checkpoint(src, tmp_path / "q.safetensors")
    with pytest.raises(TypeError, match="takes file paths; dst is a int"):
        mq.quantize_checkpoint(tmp_path / "model.safetensors", 3)
