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
