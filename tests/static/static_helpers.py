"""Helpers shared by the static int8 tests: BatchNorm statistics that look trained,
a raw program node for ``_C.static_program``, the save -> load -> still-one-C-call check and a
model torch.fx cannot trace (the per-layer fallback's)."""
import math
import warnings

import torch
from torch import nn

import mono_quant as mq
from mono_quant.calibration import CalibrationWarning
from mono_quant.static.program import StaticInt8Model

__all__ = ["trained_like", "quantized_static", "program_node", "assert_loads_as_program", "Branchy", "BranchyConv", "Chain",
           "DataDependent"]


class Chain(nn.Module):
    """conv -> conv (int8 codes between them: conv1 has an int8 output scale) -> linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


class Branchy(nn.Module):
    """A conv and a linear head around data-dependent control flow, which torch.fx can't trace."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:
            y = y * 2
        return self.fc(y.mean((2, 3)))


class DataDependent(nn.Module):
    """A Linear behind an `if` on the data, which torch.fx can't trace: quantize() falls back to
    per-layer static int8."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        if x.sum() > -1e9:
            x = x + 0
        return self.fc(x)


class BranchyConv(nn.Module):
    """A conv (of any padding mode) and a Linear head around a branch on a value: fx cannot trace it,
    so quantize falls back to per-layer static layers."""

    def __init__(self, padding_mode="zeros"):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, padding_mode=padding_mode)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > -1e9:
            y = torch.relu(y)
        return self.fc(y.mean((2, 3)))


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics that look trained (not identity BN); eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def quantized_static(cls, shape, seed: int = 0) -> nn.Module:
    """``cls()`` with trained-looking BatchNorm, static int8 from 100 random calibration inputs."""
    torch.manual_seed(seed)
    model = trained_like(cls(), seed)
    calib = torch.randn(100, *shape, generator=torch.Generator().manual_seed(seed + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return mq.quantize(model, "int8", activations="static", calibration=calib).model


def program_node(kind, in0, in1, out, ints=None, floats=None, arrays=()):
    """One node tuple as ``_C.static_program`` takes it (defaults: a neutral node)."""
    ints = ints or (1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    floats = floats or (-math.inf, math.inf, 1.0, 1.0, 1.0, 1.0)
    return (kind, in0, in1, out, ints, floats, arrays)


def assert_loads_as_program(model, x: torch.Tensor, path) -> None:
    """Saved and loaded, the model is a compiled program giving the same bits."""
    mq.save(model, path)
    loaded = mq.load(path)
    assert isinstance(loaded, StaticInt8Model)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    assert loaded._compiled
