"""load(path, model=...) refuses a skeleton whose layer has a bias where the saved layer has none, or
the other way round (the loaded model used to take the file's choice silently: a bias=False config,
or a file whose bias was taken out, gave other outputs than the skeleton describes)."""
import pytest
import torch
from torch import nn

import mono_quant as mq


def _mlp(first_bias=False, second_bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64, bias=first_bias), nn.ReLU(), nn.Linear(64, 32, bias=second_bias))


@pytest.fixture(params=["int8", "int4", "fp16"])
def saved(request, tmp_path):
    return mq.save(mq.quantize(_mlp(), request.param), tmp_path / "mlp.safetensors")


@pytest.mark.parametrize("biases, message", [
    ((True, True), "layer '0': a bias in the model, none in the checkpoint"),
    ((False, False), "layer '2': a bias in the checkpoint, none in the model"),
])
def test_other_bias_presence_is_refused(saved, biases, message):
    with pytest.raises(mq.CheckpointError, match=message):
        mq.load(saved, model=_mlp(*biases))


def test_same_bias_presence_loads(saved):
    x = torch.randn(3, 64)
    assert torch.equal(mq.load(saved, model=_mlp())(x), mq.load(saved, model=_mlp())(x))
    loaded = mq.load(saved, model=_mlp())
    assert loaded[0].bias is None and loaded[2].bias is not None


def test_conv_bias_presence(tmp_path):
    def build(bias):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, bias=bias))
    path = mq.save(mq.quantize(build(True), "int8"), tmp_path / "conv.safetensors")
    with pytest.raises(mq.CheckpointError, match="a bias in the checkpoint, none in the model"):
        mq.load(path, model=build(False))
    x = torch.randn(1, 3, 6, 6)
    assert torch.equal(mq.load(path, model=build(True))(x), mq.quantize(build(True), "int8").model(x))
