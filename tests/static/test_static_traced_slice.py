"""A slice whose bound is computed from a traced value (``h[:, : h.shape[1] // 2]``,
``self.pos[:T]`` with ``T`` from ``x.shape``): the captured program resolves the value inside the
slice and orders the op after it (the slice kept the traced reference: quantize raised
"slice indices must be integers or None"), and a saved model reads it back."""
import warnings

import torch
from torch import nn

import mono_quant as mq
from mono_quant.calibration import CalibrationWarning


def _static(model, calib):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return mq.quantize(model.eval(), "int8", activations="static", calibration=calib)


class HalfWidth(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(16, 4)

    def forward(self, x):
        h = self.a(x)
        return self.b(h[:, : h.shape[1] // 2])


class Positions(nn.Module):
    """A positional table cut to the sequence length of the input."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 4)
        self.pos = nn.Parameter(torch.randn(12, 16) * 0.1)

    def forward(self, x):
        return self.out(self.inp(x) + self.pos[: x.shape[1]])


class SizeSlice(nn.Module):
    """The bound from ``size()`` and ``-``: calls a static file can hold."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(24, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h[:, : h.size(1) - 8])


def _close(model, q, x):
    with torch.no_grad():
        ref, got = model(x), q(x)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 0.1 * float(ref.abs().max()) + 1e-3


def test_slice_bound_from_a_traced_shape():
    torch.manual_seed(0)
    model = HalfWidth().eval()
    q = _static(model, torch.randn(128, 16)).model
    _close(model, q, torch.randn(3, 16))


def test_slice_of_a_parameter_to_the_input_length():
    torch.manual_seed(0)
    model = Positions().eval()
    q = _static(model, torch.randn(64, 10, 8)).model
    _close(model, q, torch.randn(2, 10, 8))
    _close(model, q, torch.randn(2, 7, 8))  # another length: the bound is recomputed


def test_slice_bound_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = SizeSlice().eval()
    result = _static(model, torch.randn(128, 16))
    x = torch.randn(4, 16)
    _close(model, result.model, x)
    mq.save(result, tmp_path / "m.safetensors")
    loaded = mq.load(tmp_path / "m.safetensors")
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
