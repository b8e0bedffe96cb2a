"""What a user sees for a file of the wrong kind: a torch.save file given to inspect / load, a whole
pickled model given to quantize_checkpoint, a bad layer entry in a manifest (one readable line each)."""
import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.cli import main
from mono_quant.io import CheckpointError


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def test_inspect_and_load_of_a_torch_save_file_say_what_it_is(tmp_path, capsys):
    for name, obj in (("sd.pt", _model().state_dict()), ("model.pt", _model())):
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(CheckpointError, match="a torch.save file .* not a .safetensors file"):
            mq.load(path)
        assert main(["inspect", os.fspath(path)]) == 1
        err = capsys.readouterr().err
        assert "a torch.save file" in err and "corrupted header" not in err


def test_inspect_of_a_text_file_says_it_is_not_a_safetensors_file(tmp_path, capsys):
    path = tmp_path / "script.py"
    path.write_text("import torch, mono_quant as mq\n" * 4)
    assert main(["inspect", os.fspath(path)]) == 1
    assert "script.py: not a safetensors file, or a corrupted header" in capsys.readouterr().err


def test_quantize_of_a_pickled_whole_model_says_to_save_the_state_dict(tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save(_model(), path)
    with pytest.raises(CheckpointError, match=r"torch.save\(model\)\?.*save model.state_dict\(\)"):
        mq.quantize_checkpoint(path, tmp_path / "q.safetensors")
    assert main(["quantize", os.fspath(path), "-o", os.fspath(tmp_path / "q.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "\x1b[" not in err and "save model.state_dict()" in err  # no terminal escapes, says what to do


def test_a_bad_layer_entry_names_the_layer_then_the_problem(tmp_path):
    path = mq.save(mq.quantize(_model()), tmp_path / "m.safetensors")
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    manifest = json.loads(header["__metadata__"]["mono_quant"])
    manifest["layers"][0]["shape"] = [-1, 16]
    header["__metadata__"]["mono_quant"] = json.dumps(manifest)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    with pytest.raises(CheckpointError, match=r"layer #0 \('0'\): bad manifest: shape must be"):
        mq.load(bad)


def test_inspect_of_a_shard_index_says_what_it_is(tmp_path, capsys):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"0.weight": "model-00001-of-00001.safetensors"}}))
    with pytest.raises(CheckpointError, match="a JSON file \\(a shard index\\?\\), not a .safetensors file"):
        mq.load(index)
    assert main(["inspect", os.fspath(index)]) == 1
    assert "a shard index" in capsys.readouterr().err
