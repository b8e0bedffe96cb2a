"""A file's layers as the float model holds them: ``dequantize()``, ``compare`` and ``inspect`` gave a
Conv1d's height-1 ``[out, in, 1, k]`` view and a GPT-2 Conv1D saved from a model as ``[out, in]``, so
the dequantized state_dict did not load into the float model, every Conv1d row of ``compare`` read
"shape mismatch" (its summary a lowest SQNR of inf) and square GPT-2 projections compared against
their transpose (-3 dB)."""
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.io.compare import compare
from mono_quant.io.describe import describe


def _float_file(model, path):
    tensors, seen = {}, set()
    for k, v in model.state_dict().items():  # (a tied head once, as a checkpoint stores it)
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            tensors[k] = v.contiguous()
    save_file(tensors, str(path))
    return path


def _conv1d():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(8, 16, 3), nn.ReLU(), nn.Conv1d(16, 16, 3, groups=2)).eval()


def _gpt2():
    hf_models = pytest.importorskip("hf_models")
    return hf_models.build("gpt2")


@pytest.mark.parametrize("make", [_conv1d, _gpt2], ids=["Conv1d", "gpt2-Conv1D"])
@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_dequantize_compare_and_inspect_give_the_float_layout(make, dtype, tmp_path):
    model = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mq.quantize(model, dtype)
    path = mq.save(result, tmp_path / "q.safetensors")
    floats = mq.load(path).dequantize()
    state = model.state_dict()
    quantized = {f"{r.name}.weight" for r in result.report.layers}
    assert quantized and all(floats[k].shape == state[k].shape for k in quantized)
    other = make()
    other.load_state_dict(floats, strict=False)  # (shapes: loads into the float model)
    rows = {r["name"]: r for r in compare(_float_file(model, tmp_path / "f.safetensors"), path)["rows"]}
    for key in quantized:
        assert rows[key]["status"] == "ok" and list(rows[key]["shape"]) == list(state[key].shape)
        assert 15 < rows[key]["sqnr_db"] < float("inf")
    shapes = {layer["name"]: layer["shape"] for layer in describe(path)["layers"]}
    assert all(shapes[k[:-len(".weight")]] == list(state[k].shape) for k in quantized)


def test_compare_names_composites_as_the_float_modules_and_counts_aliases_once(tmp_path):
    """compare listed an LSTM's / MultiheadAttention's tensors under their quantized children's names
    ("only in A" / "only in B") and counted a tied head's alias as bytes of its own."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 64)
            self.lstm = nn.LSTM(64, 64)
            self.attn = nn.MultiheadAttention(64, 4, kdim=32, vdim=32)
            self.head = nn.Linear(64, 50, bias=False)
            self.head.weight = self.emb.weight  # tied

        def forward(self, x):
            return self.head(self.lstm(self.emb(x))[0])

    model = Net().eval()
    float_file = _float_file(model, tmp_path / "f.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mq.quantize(model, "int8", embeddings=True)
    mq.save(result, tmp_path / "q.safetensors")
    report = compare(float_file, tmp_path / "q.safetensors")
    rows = {r["name"]: r for r in report["rows"]}
    # (the float file stores the tied head once, as checkpoints do: only the quantized file names it)
    assert all(r["status"] == "ok" for r in report["rows"] if r["name"] != "head.weight"), report["rows"]
    assert {"lstm.weight_ih_l0", "lstm.bias_hh_l0", "attn.q_proj_weight", "attn.in_proj_bias"} <= set(rows)
    assert rows["attn.in_proj_bias"]["shape"] == [192] and rows["lstm.weight_ih_l0"]["sqnr_db"] > 30
    # the quantized head shares the table's scales (stored once) and packs its own codes
    assert sum(r["bytes_b"] for r in report["rows"]) <= (tmp_path / "q.safetensors").stat().st_size
    assert 0 < rows["head.weight"]["bytes_b"] < rows["emb.weight"]["bytes_b"] + 50 * 64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mq.save(mq.quantize(model, "int8"), tmp_path / "q2.safetensors")  # table float: the head stays its alias
    rows = {r["name"]: r for r in compare(float_file, tmp_path / "q2.safetensors")["rows"]}
    assert rows["head.weight"]["bytes_b"] == 0 < rows["emb.weight"]["bytes_b"]


@pytest.mark.parametrize("dtype", ["int8", "fp16", "int4"])
def test_a_gpt2_conv1d_weight_view_has_the_float_shape(dtype):
    """.weight of QuantizedGPT2Conv1D read [out, in] (the Linear it runs as): copying it into the float
    model failed on the shape."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    layer = transformers.pytorch_utils.Conv1D(48, 64)  # weight [in 64, out 48]
    q = mq.quantize(layer, dtype).model
    assert q.weight.shape == layer.weight.shape == (64, 48)
    assert torch.allclose(q.weight.dequantize(), layer.weight, atol=0.05)
    float_copy = transformers.pytorch_utils.Conv1D(48, 64)
    with torch.no_grad():
        float_copy.weight.copy_(q.weight)
    x = torch.randn(3, 64)
    # (int8 dynamic and int4 (int8 per (row, group)) also quantize x: within its rounding; fp16 computes on
    # the same weight)
    assert torch.allclose(float_copy(x), q(x), atol=0.01 if dtype in ("int8", "int4") else 1e-4)
    compiled = torch.compile(lambda m: m.weight * 1, backend="aot_eager", fullgraph=True)
    assert compiled(q).shape == (64, 48)
