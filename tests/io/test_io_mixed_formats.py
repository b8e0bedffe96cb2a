"""A mixed-precision model (int4 MLPs, int8 attention, fp16 head, a float layer) through
save / load / inspect: each layer's format is recorded in its manifest entry, validated at
load, and the round trip is bit for bit."""
import json
import pytest
import torch

import mono_quant as mq
from mono_quant.cli import main
from mono_quant.io import CheckpointError
from mono_quant.io.manifest import METADATA_KEY
from mono_quant.modules.registry import QuantizedModule
from safetensors_bytes import split_file, write_file

from mixed_models import D, float_model as _float, formats as _formats, mixed as _mixed

EXPECTED = {"blocks.0.attn.0": "int8", "blocks.0.mlp.0": "int4", "mha.in_proj": "int8", "head": "fp16"}


@pytest.fixture()
def saved(tmp_path):
    _, _, third = _mixed(_float())
    return mq.save(third, tmp_path / "mixed.safetensors"), third.model


def _manifest(path):
    header, _ = split_file(path)
    return json.loads(header["__metadata__"][METADATA_KEY])


@pytest.mark.parametrize("what", ["result", "model"])
def test_round_trip_is_bit_identical_with_each_layers_format(tmp_path, what):
    _, _, third = _mixed(_float())
    path = mq.save(third if what == "result" else third.model, tmp_path / f"{what}.safetensors")
    again = mq.load(path, model=_float())
    assert _formats(again) == _formats(third.model)
    assert type(again.extra) is torch.nn.Linear
    sd, ref = again.state_dict(), third.model.state_dict()
    assert list(sd) == list(ref)
    for key in ref:
        assert sd[key].dtype == ref[key].dtype and torch.equal(sd[key], ref[key]), key
    x = torch.randn(2, 5, D)
    assert torch.equal(again(x), third.model(x))


def test_the_manifest_records_the_format_per_layer(saved):
    path, model = saved
    layers = {layer["name"]: layer for layer in _manifest(path)["layers"]}
    assert {name: layers[name]["dtype"] for name in EXPECTED} == EXPECTED
    assert {name: layers[name]["attrs"]["weight_format"] for name in EXPECTED} == EXPECTED
    assert set(layers) == set(_formats(model)) and "extra" not in layers


def test_inspect_lists_each_layers_format(saved, capsys):
    path, _ = saved
    assert main(["inspect", str(path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:-1]}
    for name, fmt in EXPECTED.items():
        assert fmt in rows[name].split(), rows[name]
    assert "float32" in rows["extra.weight"].split()
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {layer["name"]: layer["dtype"] for layer in info["layers"] if layer["name"] in EXPECTED} == EXPECTED


@pytest.mark.parametrize("field", ["dtype", "attrs"])
def test_a_layer_format_that_disagrees_with_its_tensors_is_refused(saved, field):
    path, _ = saved
    header, data = split_file(path)
    manifest = json.loads(header["__metadata__"][METADATA_KEY])
    layer = next(layer for layer in manifest["layers"] if layer["name"] == "blocks.0.mlp.0")  # int4
    if field == "dtype":
        layer["dtype"] = "int8"
    else:
        layer["attrs"]["weight_format"] = "fp16"
    header["__metadata__"][METADATA_KEY] = json.dumps(manifest)
    write_file(path, header, data)
    with pytest.raises(CheckpointError, match="blocks.0.mlp.0"):
        mq.load(path, model=_float())


def test_a_loaded_mixed_model_quantizes_its_float_layers(saved):
    path, model = saved
    loaded = mq.load(path, model=_float())
    result = mq.quantize(loaded, "int8")
    assert [r.name for r in result.report.layers] == ["extra"]
    assert all(s.reason.startswith("already quantized") for s in result.skipped)
    assert _formats(result.model) == {**_formats(model), "extra": "int8"}
    assert not any(isinstance(m, QuantizedModule) for m in [loaded.extra])
