"""Quantized layers run outside autocast on every route: the C routes and the traced ops never
followed it, so the routes that call torch's BLAS did alone - under autocast(cpu, bfloat16) the
output's dtype (and bf16 numbers) changed with the batch size, and torch.compile's output differed
from eager's by up to 1e-2."""
import pytest
import torch
from torch import nn

import mono_quant as mq

FORMATS = [("int8", "dynamic"), ("int8", None), ("int4", None), ("fp16", None)]


@pytest.mark.parametrize("dtype,activations", FORMATS)
@pytest.mark.parametrize("make,shapes", [
    (lambda: nn.Linear(64, 64), [(1, 64), (16, 64), (300, 64)]),
    (lambda: nn.Conv2d(16, 16, 3, padding=1), [(1, 16, 5, 5), (4, 16, 20, 20)]),
    # (a Conv1d's forward re-entered itself with the 4-D input under autocast: "Expected 2D (unbatched)
    # or 3D (batched) input to conv1d, but got input of size: [4, 16, 1, 40]")
    (lambda: nn.Conv1d(16, 16, 3, padding=1), [(1, 16, 9), (4, 16, 40), (16, 9)]),
], ids=["linear", "conv", "conv1d"])
def test_autocast_changes_nothing(make, shapes, dtype, activations):
    torch.manual_seed(0)
    torch._dynamo.reset()  # (a fresh module each case: the same forward would pass dynamo's recompile limit)
    q = mq.quantize(nn.Sequential(make()), dtype, activations=activations, include=["0"]).model
    compiled = torch.compile(q, backend="eager", fullgraph=True)
    with torch.no_grad():
        for shape in shapes:
            x = torch.randn(*shape)
            want = q(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got, got_compiled = q(x), compiled(x)
            assert got.dtype == torch.float32 and torch.equal(got, want), shape
            assert torch.equal(got_compiled, want), shape


def test_autocast_gpt2_conv1d():
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D
    torch.manual_seed(0)
    q = mq.quantize(nn.Sequential(conv1d(48, 64)), "int8", include=["0"]).model
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        want = q(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = q(x)
    assert got.dtype == torch.float32 and torch.equal(got, want)
