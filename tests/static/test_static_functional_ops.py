"""Functional forms the static capture and its files take as the modules are: F.hardtanh(x, 0, 6),
torch.clamp(x, 0, 6) and x.clamp(min=0) fuse into the conv before them as ReLU6 / ReLU (docs/static.md:
"module or functional"; they stayed float ops), and the traced ops of common classifiers save and load
bit-identical: ``x.shape[0]`` (fx's getattr, replayed as a tensor's shape only), ``//`` (ShuffleNet's channel
shuffle), torch.transpose / stack / clamp, F.pad / leaky_relu / hardtanh, ``view_as`` and ``x[..., 1:-1]``."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.calibration import CalibrationWarning
from mono_quant.io.errors import CheckpointError
from mono_quant.static import StaticNoGradWarning
from static_file_edits import StaticFileEdits

KEY = "mono_quant.static"
ACTIVATIONS = {"hardtanh": (lambda x: F.hardtanh(x, 0.0, 6.0), "relu6"),
               "hardtanh-keywords": (lambda x: F.hardtanh(x, min_val=0, max_val=6), "relu6"),
               "clamp": (lambda x: torch.clamp(x, 0, 6), "relu6"),
               "clamp-method-min": (lambda x: x.clamp(min=0), "relu"),
               "relu-inplace": (lambda x: F.relu(x, inplace=True), "relu"),
               "hardtanh-other-range": (lambda x: F.hardtanh(x, -1.0, 1.0), None)}


class Act(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.a, self.b, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), act

    def forward(self, x):
        return self.b(self.act(self.a(x)))


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle, a padded slice, stack, transpose and friends after static convs."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w)
        y = torch.transpose(y, 1, 2).contiguous().view(n, -1, h, w)
        y = F.pad(F.leaky_relu(self.b(y), 0.1), (1, 1, 1, 1))[..., 1:-1, 1:-1]
        y = torch.stack([y, F.hardtanh(y)]).mean(0)
        return y.reshape(y.shape[0], -1).view_as(y.flatten(1))


def _static(model, **kw):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return mq.quantize(model.eval(), "int8", activations="static", calibration=torch.randn(64, 3, 8, 8), **kw)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_functional_clamps_fuse_as_the_modules(name, tmp_path):
    act, fused = ACTIVATIONS[name]
    torch.manual_seed(1)
    model = Act(act)
    result = _static(model)
    first = next(r for r in result.report.layers if r.name == "a")
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        y = result.model(x)
        torch.testing.assert_close(y, model(x), rtol=0.1, atol=0.1)
    if fused is None:
        assert first.output == "float"  # (another range: a float op after the conv)
        return
    assert first.act == fused and first.output == "int8"
    mq.save(result, tmp_path / "m.safetensors")
    with torch.inference_mode():
        assert torch.equal(mq.load(tmp_path / "m.safetensors")(x), y)


def test_common_traced_ops_save_and_load_bit_identical(tmp_path):
    torch.manual_seed(2)
    model = Shuffle()
    result = _static(model)
    x = torch.randn(3, 3, 8, 8)
    with torch.inference_mode():
        y = result.model(x)
        torch.testing.assert_close(y, model(x), rtol=0.1, atol=0.1)
    mq.save(result, tmp_path / "m.safetensors")
    with torch.inference_mode():
        assert torch.equal(mq.load(tmp_path / "m.safetensors")(x), y)


def test_a_file_getattr_reads_only_a_shape(tmp_path):
    result = _static(Shuffle())
    mq.save(result, tmp_path / "m.safetensors")
    edits = StaticFileEdits(tmp_path / "m.safetensors", KEY, tmp_path)
    manifest = edits.manifest_copy()
    entry = next(e for e in manifest["program"] if e.get("call", {}).get("target") == "builtins.getattr")
    args = entry["call"]["args"]
    (args["$tuple"] if isinstance(args, dict) else args)[1] = "__class__"
    with pytest.raises(CheckpointError, match="getattr reads only a tensor's 'shape'"):
        mq.load(edits.write("attr.safetensors", manifest))


def test_a_float_layer_that_trains_before_static_ones_is_warned_of():
    """(the fx path warned only of the model's own input; the per-layer fallback warned here too)"""
    result = _static(Act(F.relu), exclude=["a"])
    assert any(p.requires_grad for p in result.model.parameters())
    with pytest.warns(StaticNoGradWarning, match="no gradient flows back"):
        result.model(torch.randn(2, 3, 8, 8))


def test_a_calibration_callable_without_the_model_argument_says_so():
    model = Act(F.relu).eval()
    batches = torch.randn(64, 3, 8, 8).split(16)
    with pytest.raises(mq.ConfigError, match="a callable that takes no argument.*lambda model"):
        mq.quantize(model, "int8", activations="static", calibration=lambda: [model(b) for b in batches])
    result = _static(model)  # (a tensor: fine) and the callable of the copy:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        mq.quantize(model, "int8", activations="static", calibration=lambda m: [m(b) for b in batches])
    assert result.model is not None
