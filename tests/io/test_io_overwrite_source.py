"""quantize_checkpoint() / `mono-quant quantize --force` never replace the checkpoint they read:
with overwrite the final rename used to put the quantized file in place of the float original."""
import hashlib
import json
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.cli import main
from mono_quant.io import CheckpointError


def _float_sd():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).state_dict()


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink"])
def test_safetensors_source_is_refused_and_kept(tmp_path, spelling):
    src = tmp_path / "model.safetensors"
    save_file(_float_sd(), os.fspath(src))
    before = _digest(src)
    dst = {"same": src, "dot": tmp_path / "." / "model.safetensors", "symlink": tmp_path / "link.safetensors"}[spelling]
    if spelling == "symlink":
        os.symlink(src, dst)
    with pytest.raises(CheckpointError, match="is the checkpoint being quantized"):
        mq.quantize_checkpoint(src, dst, "int8", overwrite=True)
    assert _digest(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"model.safetensors", dst.name})  # no temp file left


def test_torch_pt_source_is_refused(tmp_path):
    src = tmp_path / "model.pt"
    torch.save(_float_sd(), src)
    before = _digest(src)
    # (refused already for its name: a .pt destination would hold safetensors under a pickle's name)
    with pytest.raises(ValueError, match="safetensors"):
        mq.quantize_checkpoint(src, src, "int4", overwrite=True)
    assert _digest(src) == before


def test_a_shard_or_the_index_of_the_source_folder_is_refused(tmp_path):
    sd = _float_sd()
    keys = list(sd)
    weight_map = {}
    for i, part_keys in enumerate((keys[:2], keys[2:])):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: sd[k] for k in part_keys}, os.fspath(tmp_path / name))
        weight_map.update({k: name for k in part_keys})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    shard = tmp_path / "model-00002-of-00002.safetensors"
    before = _digest(shard)
    with pytest.raises(CheckpointError, match="is the checkpoint being quantized"):
        mq.quantize_checkpoint(tmp_path, shard, "int8", overwrite=True)
    with pytest.raises(CheckpointError, match="is the checkpoint being quantized"):
        mq.quantize_checkpoint(index, index, "int8", overwrite=True)
    assert _digest(shard) == before
    # another file in the same folder is fine
    mq.quantize_checkpoint(index, tmp_path / "out.safetensors", "int8")
    assert mq.load(tmp_path / "out.safetensors").keys()


def test_cli_force_onto_its_own_input(tmp_path, capsys):
    src = tmp_path / "model.safetensors"
    save_file(_float_sd(), os.fspath(src))
    before = _digest(src)
    assert main(["quantize", os.fspath(src), "-o", os.fspath(src), "--force"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mono-quant quantize: error: ") and "is the checkpoint being quantized" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _digest(src) == before
