"""torch.func transforms (vmap, grad, jacrev, jacfwd) over a quantized model raise a clear
NotImplementedError.  They used to fail obscurely ("Cannot access data pointer of Tensor that
doesn't have storage", "autograd.Function ... must override the setup_context staticmethod",
"calling .item()") or, on some conv routes, run on; plain autograd to the input still works."""
import warnings

import pytest
import torch
from torch import nn
from torch.func import grad, jacfwd, jacrev, vmap

import mono_quant as mq

MATCH = r"torch.func transforms .* not supported.*plain autograd"


def _quantized(kind, dtype):
    torch.manual_seed(0)
    model, x = {
        "linear": (nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 16)), torch.randn(3, 32)),
        "conv2d": (nn.Sequential(nn.Conv2d(8, 16, 3)), torch.randn(3, 8, 6, 6)),
        "conv1d": (nn.Sequential(nn.Conv1d(8, 16, 3)), torch.randn(3, 8, 10)),
        "lstm": (nn.LSTM(16, 32), torch.randn(5, 3, 16)),
        "mha": (nn.MultiheadAttention(32, 4), torch.randn(5, 3, 32)),
    }[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel, skipped = mq.quantize(model.eval(), dtype, min_weight_numel=0)
    assert not skipped
    if kind == "lstm":
        return (lambda t: qmodel(t)[0]), x
    if kind == "mha":
        return (lambda t: qmodel(t, t, t)[0]), x
    return qmodel, x


TRANSFORMS = {
    "vmap": lambda f, x: vmap(f)(x.unsqueeze(0)),
    "grad": lambda f, x: grad(lambda t: f(t).sum())(x),
    "jacrev": lambda f, x: jacrev(f)(x),
    "jacfwd": lambda f, x: jacfwd(f)(x),
}


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
@pytest.mark.parametrize("kind", ["linear", "conv2d", "conv1d", "lstm", "mha"])
def test_transforms_are_refused(kind, dtype, transform):
    if kind in ("lstm", "mha") and dtype == "int4" or (kind == "lstm" and dtype == "fp16"):
        pytest.skip("not a format this layer takes")
    f, x = _quantized(kind, dtype)
    with pytest.raises(NotImplementedError, match=MATCH):
        TRANSFORMS[transform](f, x)


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_embedding_under_vmap_is_refused(dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel, _ = mq.quantize(nn.Sequential(nn.Embedding(10, 16)), dtype, embeddings=True, min_weight_numel=0)
    with pytest.raises(NotImplementedError, match=MATCH):
        vmap(qmodel)(torch.randint(0, 10, (4, 1, 3)))


@pytest.mark.parametrize("kind", ["linear", "conv2d", "conv1d", "lstm", "mha"])
def test_plain_autograd_to_the_input_still_works(kind):
    f, x = _quantized(kind, "int8")
    x = x.clone().requires_grad_()
    f(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    x2 = x.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(f(x2).sum(), x2)
    assert torch.allclose(g, x.grad)
    with torch.no_grad():  # and a plain call after a refused transform
        f(x.detach())
