"""forward arguments with defaults (``mask=None``, ``scale=2.0``) in a captured static model: bound
as Python binds them (by position, by name, else the default), where the program took the next
positional argument for every input (a bare StopIteration).  An optional argument calibration
never passed is captured for its None (torch.fx takes ``if mask is not None`` one way only), one
calibration passed is required; passing what the graph was not captured for is a TypeError."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.calibration import CalibrationWarning


class OptMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.o = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x, mask=None):
        h = F.relu(self.a(x))
        if mask is not None:
            h = h * mask
        return self.o(h)


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 4)

    def forward(self, x, scale=2.0):
        return self.a(x) * scale


def _static(model, calib):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return mq.quantize(model.eval(), "int8", activations="static", calibration=calib)


def _close(ref, got):
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 0.05 * float(ref.abs().max()) + 1e-3


def test_optional_argument_calibration_never_passed():
    torch.manual_seed(0)
    model = OptMask().eval()
    q = _static(model, torch.randn(128, 8)).model
    x = torch.randn(3, 8)
    with torch.no_grad():
        _close(model(x), q(x))
        _close(model(x), q(x, None))
        _close(model(x), q(x, mask=None))
        with pytest.raises(TypeError, match="mask.*None"):
            q(x, mask=torch.ones(3, 8))


@pytest.mark.parametrize("calib", ["dict", "dicts"])
def test_optional_argument_calibration_passed(calib):
    torch.manual_seed(0)
    model = OptMask().eval()
    data = {"x": torch.randn(128, 8), "mask": (torch.rand(128, 8) > 0.3).float()}
    q = _static(model, data if calib == "dict" else [data]).model
    x, mask = torch.randn(3, 8), (torch.rand(3, 8) > 0.3).float()
    with torch.no_grad():
        _close(model(x, mask), q(x, mask))
        _close(model(x, mask=mask), q(x, mask=mask))
        _close(model(x=x, mask=mask), q(mask=mask, x=x))
        with pytest.raises(TypeError, match="missing argument 'mask'"):
            q(x)


def test_number_default():
    torch.manual_seed(0)
    model = Scaled().eval()
    q = _static(model, torch.randn(128, 8)).model
    x = torch.randn(3, 8)
    with torch.no_grad():
        _close(model(x), q(x))
        _close(model(x, 3.0), q(x, 3.0))
        _close(model(x, scale=0.5), q(x, scale=0.5))


def test_arguments_bound_as_python_binds_them():
    q = _static(OptMask(), torch.randn(128, 8)).model
    x = torch.randn(3, 8)
    with pytest.raises(TypeError, match="missing argument 'x'"):
        q()
    with pytest.raises(TypeError, match="unexpected keyword argument 'masks'"):
        q(x, masks=None)
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        q(x, x=x)
    with pytest.raises(TypeError, match="takes 2 arguments, got 3"):
        q(x, None, None)


def test_defaults_survive_save_and_load(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    for i, (model, calib) in enumerate([(OptMask(), torch.randn(128, 8)), (Scaled(), torch.randn(128, 8))]):
        result = _static(model, calib)
        path = tmp_path / f"m{i}.safetensors"
        mq.save(result, path)
        loaded = mq.load(path)
        with torch.no_grad():
            assert torch.equal(loaded(x), result.model(x))
    with torch.no_grad():
        assert torch.equal(loaded(x, scale=3.0), result.model(x, scale=3.0))
