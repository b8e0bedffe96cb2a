"""Writes into a quantized layer's ``.weight`` through ``.data``, ``.detach()``, ``.set_()``, ``.data =``,
turning on its ``requires_grad``, and assigning ``layer.weight = ...``: each used to pass and be lost
(or, for ``layer.weight = nn.Parameter(...)`` on an fp16 layer, drop the stored weight and raise
KeyError).  Each now raises, naming the layer and saying what to do; reads keep working."""
import pytest
import torch
from torch import nn

import mono_quant as mq

WRITES = {
    "data.copy_": lambda w: w.data.copy_(torch.zeros(w.shape)),
    "data.zero_": lambda w: w.data.zero_(),
    "data.mul_": lambda w: w.data.mul_(2),
    "data_setitem": lambda w: w.data.__setitem__(0, 1.0),
    "data=": lambda w: setattr(w, "data", torch.zeros(w.shape)),
    "set_": lambda w: w.set_(torch.zeros(w.shape)),
    "detach.zero_": lambda w: w.detach().zero_(),
    "detach.copy_": lambda w: w.detach().copy_(torch.zeros(w.shape)),
    "torch.detach.fill_": lambda w: torch.detach(w).fill_(1.0),
}


def _model(dtype, layer="linear"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16)) if layer == "linear" else nn.Sequential(nn.Conv1d(8, 16, 3))
    qmodel, _ = mq.quantize(model, dtype, min_weight_numel=0)
    x = torch.randn(2, 32) if layer == "linear" else torch.randn(2, 8, 20)
    return qmodel, x


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
@pytest.mark.parametrize("write", list(WRITES), ids=str)
def test_writes_through_aliases_raise(dtype, write):
    qmodel, x = _model(dtype)
    with torch.no_grad():
        before = qmodel(x)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"QuantizedLinear \(" + dtype
                                        + r".*read-only view.*quantize it again.*set_weight"):
        WRITES[write](qmodel[0].weight)
    with torch.no_grad():
        assert torch.equal(qmodel(x), before)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_conv1d_view_writes_raise():
    qmodel, _ = _model("int8", "conv1d")
    with pytest.raises(RuntimeError, match=r"QuantizedConv1d \(int8, \[16, 8, 3\]\).*read-only"):
        qmodel[0].weight.data.copy_(torch.zeros(16, 8, 3))


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
@pytest.mark.parametrize("how", ["requires_grad_()", "requires_grad_(True)", "requires_grad = True",
                                 "detach().requires_grad_()"])
def test_requires_grad_on_the_view_raises(dtype, how):
    qmodel, _ = _model(dtype)
    w = qmodel[0].weight
    with pytest.raises(RuntimeError, match="requires_grad=True on the .weight of QuantizedLinear.*frozen.*quantize "
                                           "it again"):
        if how == "requires_grad_()":
            w.requires_grad_()
        elif how == "requires_grad_(True)":
            w.requires_grad_(True)
        elif how == "requires_grad = True":
            w.requires_grad = True
        else:
            w.detach().requires_grad_()
    assert not qmodel[0].weight.requires_grad
    w.requires_grad_(False)  # freezing loops still pass
    w.requires_grad = False


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
@pytest.mark.parametrize("value", ["parameter", "tensor", "none", "del"])
def test_assigning_the_weight_raises_and_keeps_the_layer(dtype, value):
    qmodel, x = _model(dtype)
    before = qmodel(x)
    layer = qmodel[0]
    with pytest.raises(AttributeError, match="QuantizedLinear.*set_weight.*quantize it again"):
        if value == "parameter":
            layer.weight = nn.Parameter(torch.zeros(16, 32))
        elif value == "tensor":
            layer.weight = torch.zeros(16, 32)
        elif value == "none":
            layer.weight = None
        else:
            del layer.weight
    assert torch.equal(qmodel(x), before)  # (an fp16 layer lost its weight buffer to the Parameter)


def test_fp16_buffer_of_its_own_dtype_and_shape_may_be_assigned():
    """A plain tensor of the stored buffer's dtype and shape replaces it, as nn.Module does
    (the Hugging Face loader fills fp16 layers so)."""
    qmodel, x = _model("fp16")
    new = torch.randn(16, 32).half()
    qmodel[0].weight = new
    assert torch.equal(qmodel[0]._buffers["weight"], new)


def test_reads_through_aliases_still_work():
    qmodel, _ = _model("int8")
    layer = qmodel[0]
    w = layer.dequantized_weight()
    assert torch.equal(layer.weight.data * 1, w) and torch.equal(layer.weight.detach().clone(), w)
    assert torch.equal(torch.as_tensor(layer.weight.detach().numpy()), w)
    assert layer.weight.data.shape == (16, 32) and not layer.weight.detach().requires_grad
    copy = layer.weight.detach().clone()
    copy.zero_()  # a copy is the caller's own
    assert torch.equal(layer.weight * 1, w)
