"""A static layer's float NCHW output is contiguous, as the float op's is (it was the
channels-last kernel output permuted: ``x.view(x.size(0), -1)`` after a conv, or after a max pool
of one, raised "view size is not compatible" where the float model runs), on the op-by-op path
and the one-C-call program alike."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.calibration import CalibrationWarning
from mono_quant.static.modules import StaticConv2d


def _static(model, calib):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return mq.quantize(model.eval(), "int8", activations="static", calibration=calib).model


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


class ConvView(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(self.c(x).view(x.shape[0], -1))


@pytest.mark.parametrize("cls, shape", [(LeNet, (1, 28, 28)), (ConvView, (3, 8, 8))], ids=["lenet", "conv_view"])
def test_view_after_a_static_conv(cls, shape):
    torch.manual_seed(0)
    model = cls().eval()
    q = _static(model, torch.randn(128, *shape))
    x = torch.randn(4, *shape)
    with torch.no_grad():
        ref, got = model(x), q(x)
    assert float((got - ref).abs().max()) < 0.1 * float(ref.abs().max())


class Residual(nn.Module):
    """Outputs: a conv, a residual add and a concatenation, all 4-D float."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        z = self.b(y) + y
        return self.c(z), z, torch.cat([y, self.c(y)], 1)


class ConvOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_model_outputs_are_contiguous():
    torch.manual_seed(0)
    q = _static(Residual(), torch.randn(64, 3, 8, 8))
    with torch.no_grad():
        outs = q(torch.randn(2, 3, 8, 8))
    assert [o.is_contiguous() for o in outs] == [True, True, True]


def test_program_output_is_contiguous_and_matches_op_by_op():
    torch.manual_seed(0)
    q = _static(ConvOut(), torch.randn(64, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        fast = q(x)
        assert q._compiled  # the one-C-call program ran
        q.run_as_program = False
        slow = q(x)
    assert fast.is_contiguous() and slow.is_contiguous()
    assert torch.equal(fast, slow)


class ViewOfAnAdd(nn.Module):
    """view_as and view on a residual sum, a named-tuple output."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        z = self.b(y) + y
        flat = z.view(z.shape[0], -1)
        return flat.view_as(flat), z


def test_views_of_static_outputs_inside_the_model_and_after_it():
    torch.manual_seed(0)
    model = ViewOfAnAdd().eval()
    q = _static(model, torch.randn(64, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        (flat, z), (ref_flat, ref_z) = q(x), model(x)
    assert z.is_contiguous() and flat.shape == ref_flat.shape
    assert torch.equal(flat, z.view(2, -1))  # and the caller's own view of an output
    assert float((z - ref_z).abs().max()) < 0.1 * float(ref_z.abs().max())


def test_static_layers_hand_float_outputs_on_as_a_view():
    """Between layers the channels-last view stays (no copy): a float max pool after a conv takes it
    about 10x faster than a contiguous copy; the model's outputs and .view are made contiguous."""
    torch.manual_seed(0)
    conv = StaticConv2d.from_float(nn.Conv2d(3, 8, 3), None, 0.05, None, False)
    out = conv(torch.randn(2, 3, 6, 6))
    assert out.is_contiguous(memory_format=torch.channels_last) and out.shape == (2, 8, 4, 4)
