"""quantize_checkpoint(): streaming over files, shards and .pt state_dicts gives exactly quantize(state_dict)."""
import io
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.io import CheckpointError
from mono_quant.io import checkpoint as checkpoint_module


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(24, 24)
        self.mlp = nn.Linear(24, 48)
        self.out = nn.Linear(48, 24, bias=False)
        self.norm = nn.LayerNorm(24)

    def forward(self, x):
        return self.norm(x + self.out(torch.relu(self.mlp(self.attn(x)))))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 24)
        self.stem = nn.Conv2d(1, 4, 3)
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.lm_head = nn.Linear(24, 50)

    def forward(self, ids):
        h = self.embed(ids)
        for block in self.blocks:
            h = block(h)
        return self.lm_head(h)


def _model():
    torch.manual_seed(0)
    return Model().eval()


def _write_shards(folder, sd, n_shards=3):
    """An HF-style sharded checkpoint: model-0000i-of-0000n.safetensors + model.safetensors.index.json."""
    keys = list(sd)
    weight_map = {}
    for i in range(n_shards):
        name = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: sd[k].contiguous() for k in keys[i::n_shards]}
        save_file(part, os.fspath(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _assert_same_as_quantize(path, sd, **options):
    expected = mq.quantize(sd, **options).state_dict()
    qsd = mq.load(path)
    assert set(qsd) == set(expected)
    for key, tensor in expected.items():
        assert qsd[key].dtype == tensor.dtype and torch.equal(qsd[key], tensor), key
    return qsd


@pytest.mark.parametrize("dtype", ["int8", "fp16", "bf16"])
def test_sharded_directory_matches_quantize(tmp_path, dtype):
    sd = _model().state_dict()
    src = tmp_path / "ckpt"
    src.mkdir()
    _write_shards(src, sd)
    report = mq.quantize_checkpoint(src, tmp_path / "q.safetensors", dtype, exclude=["lm_head"]).report
    qsd = _assert_same_as_quantize(tmp_path / "q.safetensors", sd, dtype=dtype, exclude=["lm_head"])
    # stem + 3 x 3 block linears + embed.weight (a 2-D *.weight: the state_dict rule can't tell it from a Linear)
    assert len(report.layers) == 11
    layer_names = {layer["name"] for layer in qsd.layers}
    assert "blocks.0.attn" in layer_names and "lm_head" not in layer_names
    assert [s.name for s in report.skipped] == ["lm_head"]
    assert report.model_bytes_before == sum(t.numel() * t.element_size() for t in sd.values())
    with safe_open(os.fspath(tmp_path / "q.safetensors"), "pt") as f:  # a valid safetensors file
        assert set(f.keys()) == set(qsd)


def test_streamed_output_loads_into_the_model_like_quantize(tmp_path):
    model = _model()
    src = tmp_path / "ckpt"
    src.mkdir()
    _write_shards(src, model.state_dict(), n_shards=4)
    mq.quantize_checkpoint(src / "model.safetensors.index.json", tmp_path / "q.safetensors", exclude=["embed"])
    expected, _ = mq.quantize(model, exclude=["embed"])
    with torch.device("meta"):
        skeleton = Model()
    loaded = mq.load(tmp_path / "q.safetensors", model=skeleton)
    ids = torch.tensor([[1, 5, 7, 49]])
    assert torch.equal(loaded(ids), expected(ids))
    assert type(loaded.blocks[1].mlp) is type(expected.blocks[1].mlp)
    assert type(loaded.embed) is nn.Embedding


def test_pt_file_matches_quantize(tmp_path):
    sd = _model().state_dict()
    torch.save(sd, tmp_path / "model.pt")
    mq.quantize_checkpoint(tmp_path / "model.pt", tmp_path / "q.safetensors", symmetric=False)
    _assert_same_as_quantize(tmp_path / "q.safetensors", sd, symmetric=False)
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.bin")
    mq.quantize_checkpoint(tmp_path / "wrapped.bin", tmp_path / "q2.safetensors", granularity="per_tensor")
    _assert_same_as_quantize(tmp_path / "q2.safetensors", sd, granularity="per_tensor")
    # two candidates (a training checkpoint's model and, say, its EMA copy): which one is not guessed
    torch.save({"state_dict": sd, "model": sd, "epoch": 3}, tmp_path / "both.bin")
    with pytest.raises(mq.CheckpointError, match="holds both a 'state_dict' and a 'model' dict"):
        mq.quantize_checkpoint(tmp_path / "both.bin", tmp_path / "q3.safetensors")


def test_pt_shards_with_index(tmp_path):
    sd = _model().state_dict()
    keys = list(sd)
    weight_map = {}
    for i, part in enumerate((keys[::2], keys[1::2])):
        torch.save({k: sd[k] for k in part}, tmp_path / f"pytorch_model-{i}.bin")
        weight_map.update({k: f"pytorch_model-{i}.bin" for k in part})
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    mq.quantize_checkpoint(tmp_path, tmp_path / "q.safetensors", min_weight_numel=600)
    _assert_same_as_quantize(tmp_path / "q.safetensors", sd, min_weight_numel=600)


def test_single_file_and_header_overflow(tmp_path, monkeypatch):
    sd = _model().state_dict()
    sd.update({"step": torch.tensor(7), "empty": torch.empty(0, 4), "mask": torch.tensor([True, False]),
               "double.weight": torch.randn(3, 5, dtype=torch.float64), "half.weight": torch.randn(6, 4).bfloat16()})
    save_file(sd, os.fspath(tmp_path / "m.safetensors"))
    monkeypatch.setattr(checkpoint_module, "_header_reserve", lambda reader, keys: 16)  # forces the data move
    mq.quantize_checkpoint(tmp_path / "m.safetensors", tmp_path / "q.safetensors")
    qsd = _assert_same_as_quantize(tmp_path / "q.safetensors", sd)
    assert qsd["step"].dim() == 0 and qsd["empty"].shape == (0, 4)
    with pytest.raises(CheckpointError, match="already a mono-quant file"):
        mq.quantize_checkpoint(tmp_path / "q.safetensors", tmp_path / "qq.safetensors")


def test_progress_bar_and_quiet(tmp_path):
    sd = _model().state_dict()
    save_file(sd, os.fspath(tmp_path / "m.safetensors"))
    stream = io.StringIO()
    bar = checkpoint_module.Progress(100, True, stream)
    bar.update(100, "x")
    bar.close()
    assert "100.0%" in stream.getvalue() and stream.getvalue().endswith("\n")
    quiet = checkpoint_module.Progress(100, False, stream := io.StringIO())
    quiet.update(50)
    quiet.close()
    assert stream.getvalue() == ""


def test_overwrite_and_failures_leave_nothing(tmp_path):
    sd = _model().state_dict()
    sd["blocks.2.mlp.weight"][3, 4] = float("nan")  # fails midway, after other tensors were written
    save_file(sd, os.fspath(tmp_path / "m.safetensors"))
    dst = tmp_path / "q.safetensors"
    with pytest.raises(ValueError, match="blocks.2.mlp.weight"):
        mq.quantize_checkpoint(tmp_path / "m.safetensors", dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no dst, no temporary file
    mq.quantize_checkpoint(tmp_path / "m.safetensors", dst, nonfinite="skip")
    first = dst.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        mq.quantize_checkpoint(tmp_path / "m.safetensors", dst, dtype="fp16")
    assert dst.read_bytes() == first
    mq.quantize_checkpoint(tmp_path / "m.safetensors", dst, dtype="fp16", nonfinite="skip", overwrite=True)
    assert dst.read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "q.safetensors"]


def test_bad_sources(tmp_path):
    dst = tmp_path / "q.safetensors"
    with pytest.raises(FileNotFoundError):
        mq.quantize_checkpoint(tmp_path / "missing.safetensors", dst)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        mq.quantize_checkpoint(tmp_path / "empty", dst)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        mq.quantize_checkpoint(tmp_path / "notes.txt", dst)
    (tmp_path / "bad.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="not a torch.save zip archive"):
        mq.quantize_checkpoint(tmp_path / "bad.pt", dst)
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state_dict"):
        mq.quantize_checkpoint(tmp_path / "list.pt", dst)

    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file({"a.weight": torch.ones(4, 4)}, os.fspath(folder / "s1.safetensors"))
    save_file({"a.weight": torch.ones(4, 4)}, os.fspath(folder / "s2.safetensors"))
    with pytest.raises(CheckpointError, match="two shards"):
        mq.quantize_checkpoint(folder, dst)
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a.weight": "../plain.pt"}}))
    with pytest.raises(CheckpointError, match="file name in the index's folder"):
        mq.quantize_checkpoint(folder, dst)
    index.write_text(json.dumps({"weight_map": {"b.weight": "s1.safetensors"}}))
    with pytest.raises(CheckpointError, match="lacks"):
        mq.quantize_checkpoint(folder, dst)
    index.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        mq.quantize_checkpoint(folder, dst)
    with pytest.raises(ValueError, match="unknown dtype"):
        mq.quantize_checkpoint(tmp_path / "plain.pt", dst, dtype="int3")
    with pytest.raises(ValueError, match="group_size"):
        mq.quantize_checkpoint(tmp_path / "plain.pt", dst, group_size=128)  # int8 has no groups
    assert not dst.exists()

