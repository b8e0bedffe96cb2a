"""quantize_checkpoint() of a torch.save'd state_dict with tied tensors (one storage under two names,
e.g. lm_head.weight tied to the input projection): the data is written once, the other name is a
``tensor_aliases`` entry (as mq.save stores tied weights), and load() gives both names, tied."""
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.io.container import read_header


class Tied(nn.Module):
    """Two Linear layers sharing one weight (a Linear-style tied lm_head), and a plain one between."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(32, 64, bias=False)
        self.body = nn.Linear(64, 64)
        self.lm_head = nn.Linear(32, 64, bias=False)
        self.lm_head.weight = self.proj.weight

    def forward(self, x):
        return self.body(self.proj(x)) + self.lm_head(x)


@pytest.fixture
def tied_pt(tmp_path):
    torch.manual_seed(0)
    model = Tied().eval()
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["proj.weight"].data_ptr()
    path = tmp_path / "tied.pt"
    torch.save(sd, path)
    return model, path


@pytest.mark.parametrize("dtype", ["int8", "fp16", "int4"])
def test_tied_weight_is_written_once_and_loads_tied(tied_pt, tmp_path, dtype):
    model, src = tied_pt
    dst = tmp_path / "q.safetensors"
    result = mq.quantize_checkpoint(src, dst, dtype=dtype)
    stored = set(read_header(dst).tensors)
    assert not any(k.startswith("lm_head.") for k in stored)  # the tied data is in the file once
    assert any(k.startswith("proj.") for k in stored)
    loaded = mq.load(dst)
    aliases = loaded.manifest["tensor_aliases"]
    assert aliases and all(a.startswith("lm_head.") and t == "proj." + a[len("lm_head."):] for a, t in aliases.items())
    for alias, target in aliases.items():
        assert loaded[alias] is loaded[target]
    # tensor for tensor what quantize(state_dict) gives under each name
    expected = mq.quantize(model.state_dict(), dtype).state_dict()
    assert set(loaded.keys()) == set(expected)
    for k, v in expected.items():
        assert torch.equal(loaded[k], v), k
    assert sorted(layer.name for layer in result.report.layers) == ["body", "lm_head", "proj"]
    assert result.report.tied == {"lm_head.weight": "proj.weight"}


def test_loaded_model_keeps_the_tie(tied_pt, tmp_path):
    model, src = tied_pt
    dst = tmp_path / "q.safetensors"
    mq.quantize_checkpoint(src, dst, dtype="int8")
    with torch.device("meta"):
        skeleton = Tied()
    qmodel = mq.load(dst, model=skeleton)
    assert qmodel.lm_head.weight_packed.data_ptr() == qmodel.proj.weight_packed.data_ptr()
    x = torch.randn(3, 32)
    assert torch.equal(qmodel(x), mq.quantize(model, "int8").model(x))


def test_tied_names_kept_float_alike_are_stored_once(tied_pt, tmp_path):
    _, src = tied_pt
    dst = tmp_path / "q.safetensors"
    result = mq.quantize_checkpoint(src, dst, dtype="int8", exclude=["proj", "lm_head"])
    assert "lm_head.weight" not in read_header(dst).tensors
    loaded = mq.load(dst)
    assert loaded["lm_head.weight"] is loaded["proj.weight"]
    reasons = {s.name: s.reason for s in result.skipped}
    assert reasons == {"proj": "excluded by exclude='proj'", "lm_head": "excluded by exclude='lm_head'"}


def test_tied_names_treated_differently_are_written_as_asked(tied_pt, tmp_path):
    model, src = tied_pt
    dst = tmp_path / "q.safetensors"
    result = mq.quantize_checkpoint(src, dst, dtype="int8", exclude=["lm_head"])
    stored = read_header(dst).tensors
    assert "lm_head.weight" in stored and "proj.weight_packed" in stored
    assert {s.name: s.reason for s in result.skipped} == {"lm_head": "excluded by exclude='lm_head'"}
    loaded = mq.load(dst)
    assert torch.equal(loaded["lm_head.weight"], model.lm_head.weight.detach())


def test_quantize_state_dict_in_memory_shares_the_tied_outputs(tied_pt, tmp_path):
    """quantize(torch.load(...)) quantizes a tied weight once (its names share the outputs), so
    mq.save stores it once too, as quantize_checkpoint does."""
    _, src = tied_pt
    sd = torch.load(src, weights_only=True)
    result = mq.quantize(sd, "int8")
    out = result.state_dict()
    assert out["lm_head.weight_packed"] is out["proj.weight_packed"]
    dst = mq.save(result, tmp_path / "q.safetensors")
    assert not any(k.startswith("lm_head.") for k in read_header(dst).tensors)
    loaded = mq.load(dst)
    assert loaded["lm_head.weight_packed"] is loaded["proj.weight_packed"]


def test_tied_tensors_that_are_not_weights(tmp_path):
    """Any tied tensor is stored once (a bias, a buffer), under its own name in the aliases."""
    table = torch.randn(5)
    sd = {"a.weight": torch.randn(16, 8), "a.bias": table, "b.bias": table, "b.weight": torch.randn(16, 8)}
    torch.save(sd, tmp_path / "m.pt")
    mq.quantize_checkpoint(tmp_path / "m.pt", tmp_path / "q.safetensors")
    assert "b.bias" not in read_header(tmp_path / "q.safetensors").tensors
    loaded = mq.load(tmp_path / "q.safetensors")
    assert loaded.manifest["tensor_aliases"] == {"b.bias": "a.bias"}
    assert loaded["b.bias"] is loaded["a.bias"] and torch.equal(loaded["b.bias"], table)
    assert len(loaded.layers) == 2
