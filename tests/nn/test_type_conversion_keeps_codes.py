"""``model.type(torch.float64)`` (nn.Module.type casts every tensor, integer ones too) turned a
quantized layer's int8 / uint8 codes, packed weight and int32 layout into float64: the packed
layout was then unreadable (RuntimeError deep in a reshape, or "packed must have dtype uint8") and
an embedding kept float64 copies of its codes.  Every stored buffer now keeps its dtype, as under
``.double()`` / ``.half()`` / ``.to(dtype)``; the compute dtype follows; integer targets are refused."""
import copy
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.errors import ConfigError


def _quantized(kind, dtype):
    torch.manual_seed(0)
    model, x = {
        "linear": (nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8)), torch.randn(3, 32)),
        "conv2d": (nn.Sequential(nn.Conv2d(8, 16, 3)), torch.randn(2, 8, 6, 6)),
        "conv1d": (nn.Sequential(nn.Conv1d(8, 16, 3)), torch.randn(2, 8, 10)),
        "embedding": (nn.Sequential(nn.Embedding(10, 16)), torch.randint(0, 10, (3, 4))),
        "lstm": (nn.LSTM(16, 32), torch.randn(5, 3, 16)),
    }[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel, skipped = mq.quantize(model.eval(), dtype, min_weight_numel=0, embeddings=True)
    assert not skipped
    return qmodel, x


CONVERSIONS = {
    "type(float64)": (lambda m: m.type(torch.float64), torch.float64),
    "type('torch.DoubleTensor')": (lambda m: m.type("torch.DoubleTensor"), torch.float64),
    "type(float16)": (lambda m: m.type(torch.float16), torch.float16),
    "double()": (lambda m: m.double(), torch.float64),
    "half()": (lambda m: m.half(), torch.float16),
    "bfloat16()": (lambda m: m.bfloat16(), torch.bfloat16),
}

CASES = [(k, d) for k in ("linear", "conv2d", "conv1d", "embedding") for d in ("int8", "int4", "fp16")]
CASES += [("lstm", "int8")]


def _out(y):
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize("conversion", list(CONVERSIONS), ids=str)
@pytest.mark.parametrize("kind,dtype", CASES, ids=str)
def test_conversions_keep_the_stored_format(kind, dtype, conversion):
    qmodel, x = _quantized(kind, dtype)
    convert, to = CONVERSIONS[conversion]
    before = {name: (b.dtype, b.clone()) for name, b in qmodel.named_buffers() if not name.endswith("bias")}
    converted = copy.deepcopy(qmodel)
    assert convert(converted) is converted
    for name, b in converted.named_buffers():
        if name.endswith("bias"):
            assert b.dtype == to
            continue
        dtype_before, value = before[name]
        assert b.dtype == dtype_before, (name, dtype_before, b.dtype)
        assert torch.equal(b, value), name
    xin = x if kind == "embedding" else x.to(to)
    with torch.no_grad():
        y, ref = _out(converted(xin)), _out(qmodel(x.float() if kind != "embedding" else x))
    assert y.dtype == to
    tol = {torch.float64: 0.05, torch.float16: 0.05, torch.bfloat16: 0.1}[to]
    assert torch.allclose(y.float(), ref, atol=tol, rtol=tol)  # (float64 inputs take the weight-only route)
    if to is torch.float64:  # and back to float32, bit for bit (a 16-bit conversion rounded the bias)
        float_back = copy.deepcopy(converted).float()
        with torch.no_grad():
            assert torch.equal(_out(float_back(x)), ref)


@pytest.mark.parametrize("target", [torch.int8, torch.int32, "torch.LongTensor"], ids=str)
def test_integer_type_is_refused_and_leaves_the_layer(target):
    qmodel, x = _quantized("linear", "int8")
    ref = qmodel(x)
    with pytest.raises(ConfigError, match="conversion's dtype.*not one of float32"):
        qmodel.type(target)
    assert torch.equal(qmodel(x), ref)
