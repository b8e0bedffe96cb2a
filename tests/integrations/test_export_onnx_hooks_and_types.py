"""export_onnx: hooks on quantized layers are part of the exported graph (they were dropped with
the layer, silently: another function in ONNX Runtime), float16 / bfloat16 example inputs are
refused with a message (the file ONNX Runtime then refused to load), and small fp16 / int4 layers
stay in their format in the file (the exporter's optimizer folded them to float32)."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _export(qmodel, x, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mq.export_onnx(qmodel, (x,), path)
    return path


def _ort(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_hooks_of_quantized_layers_are_exported(tmp_path, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    qmodel = mq.quantize(model, dtype).model
    qmodel[0].register_forward_pre_hook(lambda m, args: (args[0] * 0.5,))
    qmodel[2].register_forward_hook(lambda m, args, out: out * 10 + 3)
    x = torch.randn(5, 64)
    with torch.no_grad():
        eager = qmodel(x)
    onnx_out = _ort(_export(qmodel, x, tmp_path / "hooks.onnx"), x)
    noise = (onnx_out - eager).pow(2).mean() / eager.pow(2).mean()
    assert float(noise) < 1e-3  # int8: ONNX's per-tensor activations; the hooks' x10 + 3 without them: ~1


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_example_inputs_are_refused(tmp_path, half):
    qmodel = mq.quantize(nn.Sequential(nn.Linear(64, 64)), "int8").model
    with pytest.raises(NotImplementedError, match="pass float32 inputs"):
        mq.export_onnx(qmodel, (torch.randn(2, 64, dtype=half),), tmp_path / "half.onnx")


@pytest.mark.parametrize("dtype, layer, stored", [
    ("fp16", nn.Linear(128, 64), "FLOAT16"),
    ("bf16", nn.Linear(128, 64), "BFLOAT16"),
    ("int4", nn.Linear(96, 64), "UINT8"),
    ("int4", nn.Conv2d(32, 16, 3), "UINT8"),
])
def test_small_layers_keep_their_format(tmp_path, dtype, layer, stored):
    torch.manual_seed(0)
    qmodel = mq.quantize(nn.Sequential(layer), dtype).model
    x = torch.randn(2, 32, 6, 6) if isinstance(layer, nn.Conv2d) else torch.randn(3, layer.in_features)
    path = _export(qmodel, x, tmp_path / "small.onnx")
    weight_numel = layer.weight.numel()
    big = [onnx.TensorProto.DataType.Name(t.data_type) for t in onnx.load(str(path)).graph.initializer
           if int(torch.tensor(t.dims).prod()) >= weight_numel // 2]
    assert stored in big and "FLOAT" not in big, big
    with torch.no_grad():
        if dtype == "int4":  # eager's int4 layers quantize activations to int8 per (row, group) where the graph
            # keeps them float (docs/ecosystem.md): the documented ~0.5% activation noise; float activations: exact
            y = qmodel(x)
            assert float((_ort(path, x) - y).norm() / y.norm()) < 1e-2
            qmodel[0].set_activations(None)
        assert torch.allclose(_ort(path, x), qmodel(x), atol=1e-4, rtol=1e-4)


def test_a_forward_reading_a_quantized_weight_gets_a_clear_error(tmp_path):
    class TiedHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.proj = nn.Embedding(64, 32), nn.Linear(32, 32)

        def forward(self, ids):  # the output head tied to the embedding table
            return nn.functional.linear(torch.relu(self.proj(self.emb(ids))), self.emb.weight)

    torch.manual_seed(0)
    qmodel = mq.quantize(TiedHead().eval(), "int8", embeddings=True).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NotImplementedError, match=r"forward reads a quantized layer's \.weight"):
            mq.export_onnx(qmodel, (torch.randint(0, 64, (2, 5)),), tmp_path / "tied.onnx")
