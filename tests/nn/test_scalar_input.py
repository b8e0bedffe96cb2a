"""A 0-d input to a quantized Linear gets nn.Linear's kind of error (a RuntimeError saying
the input needs a dimension), not an IndexError from deep inside the format code."""
import pytest
import torch
import torch.nn as nn

import mono_quant as mq


@pytest.mark.parametrize("dtype,activations", [("int8", "dynamic"), ("int8", None), ("int4", None), ("fp16", None)])
def test_scalar_input_is_refused_like_nn_linear(dtype, activations):
    model = nn.Sequential(nn.Linear(64, 32))
    kwargs = {"activations": activations} if dtype == "int8" else {}
    q = mq.quantize(model, dtype=dtype, **kwargs).model
    with pytest.raises(RuntimeError):
        model(torch.tensor(1.0))  # what the float layer does
    with pytest.raises(RuntimeError, match="0-d|1D"):
        q(torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="0-d|1D"):
        q(torch.tensor(1.0, requires_grad=True))


def test_one_dimensional_input_still_runs():
    model = nn.Sequential(nn.Linear(64, 32))
    q = mq.quantize(model, dtype="int8").model
    assert q(torch.randn(64)).shape == (32,)
