"""quantize(..., activations="static") of a model whose tensors are not on the CPU is refused up front,
saying what to do: on a GPU it failed deep inside with NumPy's "can't convert cuda:0 device type tensor
to numpy" (seen on an H200; tests/nn/test_cuda_device.py checks that case), on the meta device with
"Tensor.item() cannot be called on meta tensors"."""
import pytest
import torch
from torch import nn

import mono_quant as mq


def test_meta_model_refused_with_what_to_do():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(mq.ConfigError, match="meta device .*load its weights first"):
        mq.quantize(model, dtype="int8", activations="static", calibration=[torch.randn(2, 8)])


def test_partly_meta_model_refused():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    model[2].to("meta")
    with pytest.raises(mq.ConfigError, match="meta"):
        mq.quantize(model, dtype="int8", activations="static", calibration=[torch.randn(2, 8)])
    assert model[0].weight.device.type == "cpu"  # (the caller's model untouched)
