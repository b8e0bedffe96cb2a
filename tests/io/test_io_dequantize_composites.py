"""QuantizedStateDict.dequantize() of a file with LSTM / GRU / RNN / MultiheadAttention layers: the
composites are saved as their children (``lstm.ih_l0``, ``attn.in_proj``), and dequantize() wrote
those names, which no float model loads; the manifest's ``composites`` now maps them back to the
float modules' parameter names (review finding)."""
import json

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.io import CheckpointError
from mono_quant.io.manifest import METADATA_KEY
from safetensors_bytes import split_file, write_file


def _model():
    torch.manual_seed(0)
    return nn.ModuleDict({
        "lstm": nn.LSTM(16, 32, num_layers=2, bidirectional=True, proj_size=8),
        "attn": nn.MultiheadAttention(32, 4),
        "cross": nn.MultiheadAttention(32, 4, kdim=16, vdim=12, add_bias_kv=True),
        "gru": nn.GRU(8, 8), "rnn": nn.RNN(4, 4, bias=False, nonlinearity="relu"),
        "head": nn.Linear(32, 3)})


@pytest.mark.parametrize("dtype, kw", [("int8", {}), ("int4", {"group_size": 32}), ("fp16", {})],
                         ids=["int8", "int4", "fp16"])
def test_dequantize_gives_the_float_modules_names_and_values(tmp_path, dtype, kw):
    qmodel = mq.quantize(_model(), dtype, **kw).model
    path = mq.save(qmodel, tmp_path / "c.safetensors")
    sd = mq.load(path).dequantize()
    fresh = _model()
    fresh.load_state_dict(sd, strict=True)  # every float name there, nothing else
    for name in ("weight_ih_l1_reverse", "weight_hh_l0", "weight_hr_l1", "bias_ih_l0"):
        assert torch.equal(getattr(fresh.lstm, name), getattr(qmodel.lstm, name))
    assert torch.equal(fresh.attn.in_proj_weight, qmodel.attn.in_proj_weight)
    assert torch.equal(fresh.attn.in_proj_bias, qmodel.attn.in_proj_bias)
    for part in "qkv":
        assert torch.equal(getattr(fresh.cross, f"{part}_proj_weight"), getattr(qmodel.cross, f"{part}_proj_weight"))
    assert torch.equal(fresh.cross.in_proj_bias, qmodel.cross.in_proj_bias)  # q | k | v, as torch keeps it
    assert torch.equal(fresh.cross.bias_k, qmodel.cross.bias_k)
    assert torch.equal(fresh.rnn.weight_hh_l0, qmodel.rnn.weight_hh_l0)


def test_linears_named_like_a_composites_children_keep_their_names(tmp_path):
    """Pattern matching on names would have renamed a LLaMA-style q_proj or a Mamba-style in_proj."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"in_proj": nn.Linear(8, 8), "q_proj": nn.Linear(8, 8), "ih_l0": nn.Linear(8, 8)})
    sd = mq.load(mq.save(mq.quantize(model, "int8").model, tmp_path / "l.safetensors")).dequantize()
    assert sorted(sd) == sorted(model.state_dict())


def test_a_file_without_the_record_keeps_the_childrens_names_and_a_bad_record_is_refused(tmp_path):
    path = mq.save(mq.quantize(_model(), "int8").model, tmp_path / "c.safetensors")
    header, data = split_file(path)
    manifest = json.loads(header["__metadata__"][METADATA_KEY])
    assert manifest["composites"] == {"lstm": "LSTM", "attn": "MultiheadAttention", "cross": "MultiheadAttention",
                                      "gru": "GRU", "rnn": "RNN"}
    del manifest["composites"]  # (a file from before the record)
    header["__metadata__"][METADATA_KEY] = json.dumps(manifest)
    write_file(path, header, data)
    assert "lstm.ih_l0.weight" in mq.load(path).dequantize()
    manifest["composites"] = {"lstm": "Transformer"}
    header["__metadata__"][METADATA_KEY] = json.dumps(manifest)
    write_file(path, header, data)
    with pytest.raises(CheckpointError, match="composites must map module paths"):
        mq.load(path)
