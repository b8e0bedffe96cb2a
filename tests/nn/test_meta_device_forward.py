"""A quantized model moved to the meta device runs forward on meta inputs (shape inference), as
a float model does: int8 layers failed reading their packed layout's header ("Cannot copy out of
meta tensor; no data!") while int4 / fp16 ones ran."""
import copy

import pytest
import torch
from torch import nn

import mono_quant as mq


@pytest.mark.parametrize("dtype,activations", [("int8", "dynamic"), ("int8", None), ("uint8", None), ("int4", None),
                                               ("fp16", None)])
def test_forward_on_meta(dtype, activations):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    qmodel, _ = mq.quantize(model, dtype, activations=activations)
    on_meta = copy.deepcopy(qmodel).to("meta")
    y = on_meta(torch.randn(3, 3, 4, 4, device="meta"))
    assert y.shape == (3, 10) and y.device.type == "meta"
    assert on_meta[2].weight.device.type == "meta" and (on_meta[2].weight * 1).shape == (48, 64)
    assert qmodel(torch.randn(3, 3, 4, 4)).shape == (3, 10)  # the CPU model is unaffected


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16", "bf16"])
def test_embedding_forward_on_meta(dtype):
    model = nn.Sequential(nn.Embedding(100, 32))
    qmodel, skipped = mq.quantize(model, dtype, embeddings=True)
    assert not skipped
    y = copy.deepcopy(qmodel).to("meta")(torch.zeros(2, 3, dtype=torch.long, device="meta"))
    assert y.shape == (2, 3, 32) and y.device.type == "meta"  # (int8 / int4 range-checked the meta indices' values)
    with pytest.raises(IndexError):
        qmodel(torch.tensor([100]))  # the CPU model still checks
