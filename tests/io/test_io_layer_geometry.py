"""load(path, model=...) refuses a skeleton whose conv layers have another stride, padding,
dilation or padding mode than the saved ones (same weight shape: it used to load silently and
compute another convolution than the skeleton's config describes)."""
import pytest
import torch
from torch import nn

import mono_quant as mq


def _build(padding=1, stride=2, padding_mode="zeros", dilation=2):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=padding, stride=stride, padding_mode=padding_mode),
                         nn.Conv1d(4, 4, 3, padding=2, dilation=dilation), nn.Linear(4, 4))


@pytest.fixture
def saved(tmp_path):
    return mq.save(mq.quantize(_build()), tmp_path / "convs.safetensors")


@pytest.mark.parametrize("change, message", [
    (dict(padding=0), r"layer '0': padding \(1, 1\) in the checkpoint, \(0, 0\) in the model"),
    (dict(stride=1), r"layer '0': stride \(2, 2\) in the checkpoint, \(1, 1\) in the model"),
    (dict(padding_mode="reflect"), "layer '0': padding_mode zeros in the checkpoint, reflect in the model"),
    (dict(dilation=1), r"layer '1': dilation \(2,\) in the checkpoint, \(1,\) in the model"),
])
def test_other_geometry_is_refused(saved, change, message):
    with pytest.raises(mq.CheckpointError, match=message):
        mq.load(saved, model=_build(**change))


def test_same_geometry_loads_on_cpu_and_meta(saved):
    x2, x1 = torch.randn(1, 3, 9, 9), torch.randn(1, 4, 12)
    with torch.device("meta"):
        meta = _build()
    first = mq.load(saved, model=_build())
    for skeleton in (_build(), meta):
        again = mq.load(saved, model=skeleton)
        assert torch.equal(again[0](x2), first[0](x2)) and torch.equal(again[1](x1), first[1](x1))
