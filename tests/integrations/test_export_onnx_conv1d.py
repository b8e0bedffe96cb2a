"""export_onnx of quantized nn.Conv1d layers: ONNX Runtime computes what the quantized
torch model computes.  The export twin used to run F.conv2d on the height-1 2-D weight
with the 3-D input, which conv2d reads as an unbatched [C, H, W] image: no export, or,
with batch == channels, a graph of the right shape and wrong numbers."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import mono_quant as mq

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

GEOMETRIES = [{}, {"stride": 2, "padding": 2}, {"dilation": 2, "padding": 3}, {"groups": 4, "padding": 1},
              {"padding": 1, "padding_mode": "reflect"}, {"padding": 2, "padding_mode": "circular"},
              {"padding": "same"}]
FORMATS = [("int8", None), ("int8", "dynamic"), ("int4", None)]


def _sqnr(ref, y):
    ref, y = torch.as_tensor(ref).double(), torch.as_tensor(y).double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - y).pow(2).sum().clamp_min(1e-30)))


def _ort(qmodel, x, path):
    """ONNX Runtime's outputs (a list, one per model output) of the exported qmodel."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mq.export_onnx(qmodel, (x,), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


class _Branches(nn.Module):
    """One small conv stack per geometry on the same input: one export covers them all
    (an export takes about a second; one per geometry made this file a minute long)."""

    def __init__(self):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(nn.Conv1d(8, 16, 3, **geometry), nn.ReLU(), nn.Conv1d(16, 8, 1))
                                      for geometry in GEOMETRIES)

    def forward(self, x):
        return tuple(branch(x) for branch in self.branches)


def _quantized(model, dtype, activations):
    kw = {"activations": activations} if dtype == "int8" else {"group_size": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (small layers: LargerModelWarning)
        qmodel, skipped = mq.quantize(model, dtype=dtype, min_weight_numel=0, **kw)
    assert not skipped
    return qmodel


@pytest.mark.parametrize("dtype,activations", FORMATS, ids=str)
@pytest.mark.parametrize("batch", [2, 8])  # 8 == in_channels: conv2d took the batch for channels, silently
def test_conv1d_onnx_matches_quantized_torch(tmp_path, dtype, activations, batch):
    torch.manual_seed(0)
    qmodel = _quantized(_Branches().eval(), dtype, activations)
    x = torch.randn(batch, 8, 40)
    with torch.no_grad():
        ours = qmodel(x)
    outputs = _ort(qmodel, x, tmp_path / "m.onnx")
    assert len(outputs) == len(GEOMETRIES)
    for geometry, want, y in zip(GEOMETRIES, ours, outputs):
        assert y.shape == tuple(want.shape), geometry
        if activations == "dynamic":  # ONNX quantizes activations per tensor, we per image: the same noise level
            assert _sqnr(want, y) > 25, geometry
        else:
            assert np.allclose(y, want.numpy(), rtol=1e-4, atol=1e-4), (geometry, np.abs(y - want.numpy()).max())
    types = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert "Conv" in types


def test_conv1d_weight_is_exported_3d(tmp_path):
    """The Conv is a 1-D one: its weight input has rank 3 (kernel_shape of one element)."""
    torch.manual_seed(0)
    qmodel = _quantized(nn.Sequential(nn.Conv1d(8, 16, 5, stride=2)).eval(), "int8", None)
    _ort(qmodel, torch.randn(2, 8, 30), tmp_path / "m.onnx")
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "m.onnx"))).graph
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in list(graph.value_info) + list(graph.initializer)
            if hasattr(v, "type")}
    rank.update({t.name: len(t.dims) for t in graph.initializer})
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(rank.get(n.input[1]) == 3 for n in convs), [(n.input[1], rank.get(n.input[1])) for n in convs]


def test_conv1d_unbatched_input(tmp_path):
    torch.manual_seed(0)
    qmodel = _quantized(nn.Sequential(nn.Conv1d(8, 16, 3, padding=1)).eval(), "int8", None)
    x = torch.randn(8, 40)  # [C, L]
    with torch.no_grad():
        ours = qmodel(x)
    (y,) = _ort(qmodel, x, tmp_path / "m.onnx")
    assert y.shape == tuple(ours.shape) and np.allclose(y, ours.numpy(), rtol=1e-4, atol=1e-4)
