"""``+`` of a Python number computed in the graph (``x.shape[0]``, ``x.size(1) + 1``): not a
tensor add, so it is not fused into a static add (which read the number's ``.shape``: quantize
raised AttributeError); it runs in float, as traced."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.calibration import CalibrationWarning
from mono_quant.static import build_plan


class AddBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.o = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.o(self.a(x) + x.shape[0])


class AddWidthPlusOne(nn.Module):
    """A number + a constant, then added to a tensor (two adds a fused add would take)."""

    def __init__(self):
        super().__init__()
        self.a, self.o = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        n = x.size(1) + 1
        return self.o(torch.relu(n + self.a(x)))


class AddTwoSizes(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.o = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.o(self.a(x) * (x.shape[0] + x.shape[1]))


@pytest.mark.parametrize("cls", [AddBatch, AddWidthPlusOne, AddTwoSizes])
def test_add_of_a_traced_number_runs_in_float(cls):
    torch.manual_seed(0)
    model = cls().eval()
    calib = [torch.randn(4, 8) for _ in range(32)]  # (the batch size is part of the activations)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        q = mq.quantize(model, "int8", activations="static", calibration=calib).model
    for batch in (3, 5):
        x = torch.randn(batch, 8)
        with torch.no_grad():
            ref, got = model(x), q(x)
        assert float((got - ref).abs().max()) < 0.1 * float(ref.abs().max())


def test_number_adds_are_not_fused():
    plan = build_plan(AddWidthPlusOne().eval())
    assert [o.name for o in plan.ops if o.kind == "add"] == []
