"""reduce_range on the layers: quantize() / QuantConfig / config file / CLI set it, the
modules run it (eager, autograd, torch.export: the same bits), save / load keep it (old
files load as False, bad values are refused), and what cannot take it says so."""
import copy
import json
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.cli import main
from mono_quant.config import ConfigError, QuantConfig, resolve_config
from mono_quant.export_onnx import onnx_twin
from mono_quant.io import CheckpointError
from mono_quant.io.manifest import METADATA_KEY
from mono_quant.kernels import reference
from mono_quant.modules import QuantizedConv2d, QuantizedLinear
from safetensors_bytes import split_file, write_file


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(40, 24), nn.Linear(24, 8)
        self.conv = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _net():
    torch.manual_seed(0)
    return _Net().eval()


def _linears(model):
    return [m for m in model.modules() if isinstance(m, (QuantizedLinear, QuantizedConv2d))]


def test_quantize_sets_the_flag_and_the_default_is_off():
    model = _net()
    assert all(m.reduce_range for m in _linears(mq.quantize(model, "int8", reduce_range=True).model))
    assert not any(m.reduce_range for m in _linears(mq.quantize(model, "int8").model))
    cfg = QuantConfig(reduce_range=True)
    qmodel = mq.quantize(model, config=cfg).model
    assert all(m.reduce_range for m in _linears(qmodel))
    assert "reduce_range=True" in repr(qmodel.fc1)
    assert mq.quantize(model, config=cfg).config.reduce_range


def test_forward_is_the_7_bit_twin(isa):
    model = _net()
    qmodel = mq.quantize(model, "int8", reduce_range=True).model
    x = torch.randn(3, 5, 40) + 0.3
    with torch.no_grad():
        y = qmodel.fc1(x)
    fc1 = qmodel.fc1
    ref = reference.linear_int8(x.reshape(-1, 40), fc1.quantized_weight().qdata, fc1.weight_scale,
                                fc1.weight_zero_point, fc1.bias, reduce_range=True)
    assert torch.equal(y.reshape(-1, 24), ref)
    plain = mq.quantize(model, "int8").model
    with torch.no_grad():
        assert not torch.equal(plain.fc1(x), y)  # the option does change the activations
        exact = model.fc1(x)
        assert (y - exact).abs().max() < 0.05 * exact.abs().max()


def test_set_reduce_range_and_weight_only_layers():
    qmodel = mq.quantize(_net(), "int8").model
    x = torch.randn(4, 40)
    qmodel.fc1.set_reduce_range(True)
    with torch.no_grad():
        y7 = qmodel.fc1(x)
        qmodel.fc1.set_activations(None)  # weight-only: the flag stays and does nothing
        assert qmodel.fc1.reduce_range
        yw = qmodel.fc1(x)
        qmodel.fc1.set_reduce_range(False)
        assert torch.equal(qmodel.fc1(x), yw)
    assert not torch.equal(y7, yw)
    with pytest.raises(TypeError, match="True or False"):
        qmodel.fc1.set_reduce_range(1)
    q4 = mq.quantize(_net(), "int4", group_size=32).model
    with pytest.raises(ValueError, match="int8 weights with dynamic activations only"):
        q4.fc1.set_reduce_range(True)


def test_autograd_and_export_keep_the_numerics():
    qmodel = mq.quantize(_net(), "int8", reduce_range=True).model
    x = torch.randn(6, 40) + 0.2
    with torch.no_grad():
        eager = qmodel(x)
    xg = x.clone().requires_grad_()
    traced = qmodel(xg)  # autograd: the torch.library ops
    assert torch.equal(traced.detach(), eager)
    traced.sum().backward()
    assert xg.grad is not None and xg.grad.shape == x.shape
    exported = torch.export.export(qmodel, (x,))
    assert torch.equal(exported.module()(x), eager)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dtype="int4"), "applies to dtype 'int8'"),
    (dict(dtype="uint8"), "applies to dtype 'int8'"),
    (dict(dtype="fp16"), "applies to dtype 'int8'"),
    (dict(activations=None), "activations='dynamic' only"),
])
def test_reduce_range_outside_int8_dynamic_is_an_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        mq.quantize(_net(), reduce_range=True, **kwargs)


def test_config_values(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="reduce_range must be true or false"):
        QuantConfig(reduce_range="yes")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mono_quant.toml").write_text("reduce-range = true\n")
    cfg = resolve_config()
    assert cfg.reduce_range and cfg.source["reduce_range"].endswith("mono_quant.toml")
    assert all(m.reduce_range for m in _linears(mq.quantize(_net()).model))
    assert not resolve_config(reduce_range=False).reduce_range  # an argument wins over the file
    assert QuantConfig().to_dict()["reduce_range"] is False


def test_save_load_round_trip(tmp_path):
    model = _net()
    qmodel = mq.quantize(model, "int8", reduce_range=True).model
    path = mq.save(qmodel, tmp_path / "m.safetensors")
    loaded = mq.load(path, model=copy.deepcopy(model))
    assert all(m.reduce_range for m in _linears(loaded))
    x = torch.randn(3, 40)
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))


def _edit_manifest(path, edit):
    header, data = split_file(path)
    manifest = json.loads(header["__metadata__"][METADATA_KEY])
    edit(manifest)
    header["__metadata__"][METADATA_KEY] = json.dumps(manifest)
    write_file(path, header, data)


def _layer(manifest, name):
    return next(layer for layer in manifest["layers"] if layer["name"] == name)


def test_files_without_the_field_load_as_8_bit(tmp_path):
    """Files written before reduce_range existed have no such attribute: 8-bit activations."""
    model = _net()
    path = mq.save(mq.quantize(model, "int8").model, tmp_path / "old.safetensors")
    _edit_manifest(path, lambda m: [layer["attrs"].pop("reduce_range", None) for layer in m["layers"]])
    loaded = mq.load(path, model=copy.deepcopy(model))
    assert not any(m.reduce_range for m in _linears(loaded))


@pytest.mark.parametrize("dtype,value,match", [
    ("int8", "true", "reduce_range 'true' is not true or false"),
    ("int8", 1, "reduce_range 1 is not true or false"),
    ("int4", True, "reduce_range is set on a int4 layer"),
])
def test_bad_saved_values_are_refused(tmp_path, dtype, value, match):
    model = _net()
    qmodel = mq.quantize(model, dtype, group_size=32).model if dtype == "int4" else mq.quantize(model, dtype).model
    path = mq.save(qmodel, tmp_path / "m.safetensors")
    _edit_manifest(path, lambda m: _layer(m, "fc1")["attrs"].__setitem__("reduce_range", value))
    with pytest.raises(CheckpointError, match=match):
        mq.load(path, model=copy.deepcopy(model))


def test_checkpoint_and_cli(tmp_path):
    model = _net()
    src = tmp_path / "model.safetensors"
    save_file(model.state_dict(), os.fspath(src))
    dst = tmp_path / "q.safetensors"
    assert main(["quantize", str(src), "-o", str(dst), "--reduce-range", "--quiet"]) == 0
    loaded = mq.load(dst, model=copy.deepcopy(model))
    assert all(m.reduce_range for m in _linears(loaded))
    plain = tmp_path / "plain.safetensors"
    mq.quantize_checkpoint(src, plain)
    assert not any(m.reduce_range for m in _linears(mq.load(plain, model=copy.deepcopy(model))))
    _edit_manifest(dst, lambda m: m["config"].__setitem__("reduce_range", "on"))
    with pytest.raises(CheckpointError, match="reduce_range 'on' is not true or false"):
        mq.load(dst, model=copy.deepcopy(model))
    with pytest.raises(ConfigError, match="applies to dtype 'int8'"):
        mq.quantize_checkpoint(src, tmp_path / "x.safetensors", "int4", reduce_range=True)


def test_onnx_export_refuses_7_bit_layers():
    qmodel = mq.quantize(_net(), "int8", reduce_range=True).model
    with pytest.raises(NotImplementedError, match="reduce_range=True"):
        onnx_twin(qmodel.fc1)
    qmodel.fc1.set_reduce_range(False)
    assert onnx_twin(qmodel.fc1) is not None


def test_composite_children_take_the_flag(tmp_path):
    """nn.MultiheadAttention / nn.LSTM become composites of QuantizedLinears: each child has it."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = nn.MultiheadAttention(32, 4, batch_first=True)
            self.lstm = nn.LSTM(32, 16, batch_first=True)

        def forward(self, x):
            return self.lstm(self.att(x, x, x)[0])[0]

    torch.manual_seed(0)
    model = Net().eval()
    qmodel = mq.quantize(model, "int8", reduce_range=True).model
    children = [m for m in qmodel.modules() if isinstance(m, QuantizedLinear)]
    assert len(children) == 4 and all(m.reduce_range for m in children)
    loaded = mq.load(mq.save(qmodel, tmp_path / "m.safetensors"), model=copy.deepcopy(model))
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))
