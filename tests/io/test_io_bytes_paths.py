"""bytes paths, which open() takes, work in save(), load() and quantize_checkpoint(): quantize_checkpoint
accepted them and then failed with a raw TypeError, and load(b"...") reported "cannot read the tensors",
as for a damaged file."""
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq


@pytest.fixture
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative bytes paths, as a user would type them
    return tmp_path


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))


def test_save_and_load(in_tmp_path):
    model = _model()
    path = mq.save(mq.quantize(model), b"s1.safetensors")
    assert path == Path("s1.safetensors")
    qsd = mq.load(b"s1.safetensors")
    assert qsd.path == "s1.safetensors" and len(qsd.layers) == 2
    x = torch.randn(3, 32)
    assert torch.equal(mq.load(b"s1.safetensors", model=_model())(x), mq.quantize(model).model(x))
    assert mq.load(os.fsencode(in_tmp_path / "s1.safetensors")).keys() == qsd.keys()  # absolute too


def test_quantize_checkpoint(in_tmp_path):
    save_file(_model().state_dict(), "model.safetensors")
    result = mq.quantize_checkpoint(b"model.safetensors", b"q.safetensors")
    assert os.fspath(result.path) == "q.safetensors"
    assert len(mq.load("q.safetensors").layers) == 2
    os.mkdir("folder")
    os.replace("model.safetensors", "folder/model.safetensors")
    mq.quantize_checkpoint(b"folder", b"folder/q.safetensors")
    mq.quantize_checkpoint(b"folder", b"folder/q.safetensors", overwrite=True)  # a rerun: the output is no shard
    with pytest.raises(FileExistsError, match="q.safetensors already exists"):
        mq.quantize_checkpoint(b"folder", b"q.safetensors")


def test_other_types_are_still_refused(tmp_path):
    with pytest.raises(TypeError):
        mq.save(mq.quantize(_model()), 3)
    with pytest.raises(TypeError):
        mq.load(3.5)
    with pytest.raises(TypeError, match="takes file paths; dst is a int"):
        mq.quantize_checkpoint(tmp_path / "model.safetensors", 3)
