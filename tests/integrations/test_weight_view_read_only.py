"""Writing into a quantized layer's ``.weight`` view raises, saying what to do: the write went into a
dequantized temporary and was lost silently (``nn.init.zeros_(layer.weight)`` left the layer as it was)."""
import pytest
import torch
from torch import nn

import mono_quant as mq


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
@pytest.mark.parametrize("write", [
    lambda w: nn.init.zeros_(w),
    lambda w: w.mul_(2),
    lambda w: w.copy_(torch.zeros(w.shape)),
    lambda w: w.__setitem__(0, 1.0),
    lambda w: torch.add(torch.ones(w.shape), 1, out=w),
], ids=["init.zeros_", "mul_", "copy_", "setitem", "out="])
def test_writes_into_the_weight_view_raise(dtype, write):
    qmodel, _ = mq.quantize(nn.Sequential(nn.Linear(32, 16)), dtype)
    x = torch.randn(2, 32)
    before = qmodel(x)
    with torch.no_grad(), pytest.raises(RuntimeError, match="read-only view.*quantize it again.*set_weight"):
        write(qmodel[0].weight)
    assert torch.equal(qmodel(x), before)


def test_flags_that_write_no_values_still_pass():
    qmodel, _ = mq.quantize(nn.Sequential(nn.Linear(32, 16)), "int8")
    qmodel[0].weight.requires_grad_(False)  # e.g. a loop freezing every .weight
    assert not qmodel[0].weight.requires_grad


def test_reads_still_work_and_the_remedy_does():
    torch.manual_seed(0)
    qmodel, _ = mq.quantize(nn.Sequential(nn.Linear(32, 16)), "int8")
    w = qmodel[0].weight
    assert (w * 2).shape == (16, 32) and torch.equal(w.clone(), w * 1) and float(w.abs().sum()) > 0
    new = torch.randn(16, 32)
    qmodel[0].set_weight(mq.quantize_weight(new, "int8", symmetric=True))
    assert torch.allclose(qmodel[0].weight * 1, new, atol=0.05)
