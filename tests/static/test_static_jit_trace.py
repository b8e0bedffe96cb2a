"""torch.jit.trace of a static int8 model is refused with what to do: the kernels fill the output
through NumPy, which a trace does not record, so the traced module returned the uninitialized
memory of its recorded torch.empty (outputs off by more than the outputs' own size), silently."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from static_helpers import DataDependent


def _quantized(model, calibration):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(model.eval(), "int8", activations="static", calibration=calibration).model


@pytest.mark.parametrize("build", [
    lambda: (_quantized(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)),
                        torch.randn(128, 1, 8, 8)), torch.randn(2, 1, 8, 8)),
    lambda: (_quantized(DataDependent(), torch.randn(128, 16)), torch.randn(3, 16)),
], ids=["graph", "per_layer_fallback"])
def test_jit_trace_is_refused_and_the_model_still_runs(build):
    qmodel, x = build()
    expected = qmodel(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation warning
        with pytest.raises(NotImplementedError, match="torch.jit.trace.*uninitialized memory.*torch.compile"):
            torch.jit.trace(qmodel, x)
    assert torch.equal(qmodel(x), expected)  # the model is unharmed
