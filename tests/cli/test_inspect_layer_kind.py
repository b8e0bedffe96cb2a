"""`mono-quant inspect` names a layer only as far as its file knows it: a state_dict cannot
tell an Embedding's 2-D weight from a Linear's, so a layer quantized from one is "Linear or
Embedding", never a guessed "Linear"; a saved model (and an HF checkpoint, whose model says
what each weight is) names it.  The manifest's "type_from" says which; files are untrusted,
so a bad one is an error at load, and older files (without it) still read."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.cli import main
from mono_quant.io import CheckpointError
from mono_quant.io.describe import describe
from mono_quant.io.manifest import METADATA_KEY
from safetensors_bytes import split_file, write_file

OLD_STATE_DICT_FILE = Path(__file__).parent.parent / "data" / "layout_v1_checkpoint_int8.safetensors"


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(300, 64)
        self.conv = nn.Conv2d(4, 8, 3)
        self.head = nn.Linear(64, 32)


def _inspect_rows(path, capsys):
    assert main(["inspect", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {line.split()[0]: line for line in lines[1:-1]}


@pytest.fixture()
def state_dict_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "sd.safetensors"
    mq.save(mq.quantize(Tagger().state_dict(), dtype="int8"), path)
    return path


def test_state_dict_file_says_linear_or_embedding(state_dict_file, capsys):
    rows = _inspect_rows(state_dict_file, capsys)
    assert "Linear or Embedding (" in rows["embed"] and "Linear or Embedding (" in rows["head"]
    assert rows["conv"].split()[1] == "Conv2d"
    layers = {layer["name"]: layer for layer in describe(state_dict_file)["layers"]}
    # "type" stays what the weight was quantized as (load checks it against the model's layer)
    assert {n: (l["type"], l["type_from"], l["layer_kind"]) for n, l in layers.items()} == {
        "embed": ("Linear", "shape", "Linear or Embedding"), "conv": ("Conv2d", "shape", "Conv2d"),
        "head": ("Linear", "shape", "Linear or Embedding")}
    assert main(["inspect", str(state_dict_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [layer["layer_kind"] for layer in info["layers"]] == ["Linear or Embedding", "Conv2d", "Linear or Embedding"]


def test_saved_model_names_its_layers(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    mq.save(mq.quantize(Tagger(), dtype="int8", embeddings=True), path)
    rows = _inspect_rows(path, capsys)
    assert rows["embed"].split()[1] == "Embedding" and rows["head"].split()[1] == "Linear"
    assert all(layer["type_from"] == "module" for layer in describe(path)["layers"])


def test_older_file_without_type_from_reads_as_not_known(capsys):
    rows = _inspect_rows(OLD_STATE_DICT_FILE, capsys)
    assert "Linear or Embedding (" in rows["fc1"] and rows["conv"].split()[1] == "Conv2d"
    assert {layer["type_from"] for layer in describe(OLD_STATE_DICT_FILE)["layers"]} == {None}
    assert mq.load(OLD_STATE_DICT_FILE).layers  # still loads


@pytest.mark.parametrize("bad", ["guess", 1, True, ["module"]])
def test_bad_type_from_is_refused_at_load(state_dict_file, bad):
    header, data = split_file(state_dict_file)
    manifest = json.loads(header["__metadata__"][METADATA_KEY])
    manifest["layers"][0]["type_from"] = bad
    header["__metadata__"][METADATA_KEY] = json.dumps(manifest)
    write_file(state_dict_file, header, data)
    for read in (describe, mq.load):
        with pytest.raises(CheckpointError, match="type_from must be one of"):
            read(state_dict_file)
