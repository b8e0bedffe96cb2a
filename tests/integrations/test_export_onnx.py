"""export_onnx: standard ONNX that ONNX Runtime runs, matching our eager outputs
(weight-only formats to float rounding; dynamic int8 within quantization noise, as
ONNX quantizes activations per tensor where we quantize per row / image)."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import mono_quant as mq

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CASES = [("int8", "dynamic"), ("int8", None), ("int4", None), ("fp16", None)]
EXPECTED_OPS = {("int8", "dynamic"): {"DynamicQuantizeLinear", "MatMulInteger"},
                ("int8", None): {"DequantizeLinear"}, ("int4", None): {"MatMulNBits"}, ("fp16", None): set()}


def _sqnr(ref, y):
    ref, y = torch.as_tensor(ref).double(), torch.as_tensor(y).double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - y).pow(2).sum().clamp_min(1e-30)))


def _run(qmodel, inputs, path, level=None):
    """ONNX Runtime's output and the graph's op types.  ``level``: ORT's graph
    optimizations (default: all; at that level ORT may rewrite DequantizeLinear + MatMul
    into its own MatMulNBits with int8 activations, which adds activation rounding)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mq.export_onnx(qmodel, inputs, path)
    options = ort.SessionOptions()
    if level is not None:
        options.graph_optimization_level = level
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)[0], {n.op_type for n in onnx.load(str(path)).graph.node}


def _models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).eval()
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 64, 3, stride=2, groups=2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(64 * 7 * 7, 10)).eval()
    # a depthwise conv: fp16's own forward emits mono_quant::depthwise_conv2d (it had no ONNX form)
    mobile = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, groups=16),
                           nn.ReLU(), nn.Conv2d(32, 8, 1), nn.Flatten(), nn.Linear(8 * 12 * 12, 10)).eval()
    return {"mlp": (mlp, (torch.randn(4, 64),)), "cnn": (cnn, (torch.randn(2, 3, 16, 16),)),
            "mobile": (mobile, (torch.randn(2, 3, 12, 12),))}


@pytest.mark.parametrize("dtype,activations", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("name", ["mlp", "cnn", "mobile"])
def test_onnx_runtime_matches_eager(tmp_path, name, dtype, activations):
    model, inputs = _models()[name]
    kw = {"activations": activations} if dtype == "int8" else ({"group_size": 32} if dtype == "int4" else {})
    qmodel, skipped = mq.quantize(model, dtype=dtype, **kw)
    assert not skipped
    with torch.no_grad():
        ref, ours = model(*inputs), qmodel(*inputs)
    y, op_types = _run(qmodel, inputs, tmp_path / "m.onnx")
    assert EXPECTED_OPS[(dtype, activations)] <= op_types, op_types
    if activations == "dynamic":  # per-tensor vs per-row activation scales: the same noise level, not the same bits
        assert _sqnr(ref, y) > _sqnr(ref, ours) - 3 and _sqnr(ours, y) > 30
    else:
        assert np.allclose(y, ours.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_onnx_per_channel_int4_and_embeddings(tmp_path, dtype):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(50, 96), nn.Linear(96, 8)

        def forward(self, idx):
            return self.fc(self.emb(idx))

    torch.manual_seed(0)
    kw = {"group_size": None} if dtype == "int4" else {"activations": None}
    qmodel, _ = mq.quantize(Model().eval(), dtype=dtype, embeddings=True, **kw)  # int4 per channel: 96 columns
    idx = torch.randint(0, 50, (3, 5))
    with torch.no_grad():
        ours = qmodel(idx)
    y, _ = _run(qmodel, (idx,), tmp_path / "e.onnx", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    assert np.allclose(y, ours.numpy(), rtol=1e-4, atol=1e-4)  # the graph computes what we compute
    y, _ = _run(qmodel, (idx,), tmp_path / "e.onnx")
    assert _sqnr(ours, y) > 30  # ORT's own rewrites stay within quantization noise


def test_export_leaves_the_model_untouched(tmp_path):
    model, inputs = _models()["mlp"]
    qmodel, _ = mq.quantize(model, dtype="int8")
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    _run(qmodel, inputs, tmp_path / "m.onnx")
    assert all(torch.equal(before[k], v) for k, v in qmodel.state_dict().items())
    assert type(qmodel[0]) is mq.QuantizedLinear
    with pytest.raises(ValueError, match="opset"):
        mq.export_onnx(qmodel, inputs, tmp_path / "x.onnx", opset_version=17)


def test_torchscript_onnx_export_raises_instead_of_freezing_the_output(tmp_path):
    qmodel, _ = mq.quantize(nn.Sequential(nn.Linear(16, 8)), dtype="int8")
    with warnings.catch_warnings(), pytest.raises(Exception, match="mono_quant"):
        warnings.simplefilter("ignore")
        torch.onnx.export(qmodel, (torch.randn(2, 16),), str(tmp_path / "m.onnx"), dynamo=False)


def _matmul_integer_b(path):
    """The dtypes of MatMulInteger's B (the weight) and its zero-point, from the initializers."""
    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert nodes
    return {(inits[n.input[1]].dtype, inits[n.input[3]].dtype) for n in nodes}, inits, nodes


def test_dynamic_weights_are_uint8_so_ort_never_saturates(tmp_path):
    """ONNX Runtime runs MatMulInteger with an int8 B (U8S8) on x86 CPUs without VNNI with
    VPMADDUBSW, which saturates pairs of products: under qemu's Haswell the MLP below lost
    25 dB of SQNR (15 dB instead of 40).  The default export writes B as uint8 shifted by
    128 (U8U8: the same q - zero_point, never saturated); integer_matmul="u8s8" keeps int8
    for VNNI-only deployments (its outputs depend on the CPU, so they are not compared here)."""
    model, inputs = _models()["mlp"]
    qmodel, _ = mq.quantize(model, dtype="int8", activations="dynamic")
    outputs = {}
    for mode, dtype in (("u8u8", np.uint8), ("u8s8", np.int8)):
        path = tmp_path / f"{mode}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mq.export_onnx(qmodel, inputs, path, integer_matmul=mode)
        kinds, inits, nodes = _matmul_integer_b(path)
        assert kinds == {(np.dtype(dtype), np.dtype(dtype))}
        outputs[mode] = (inits[nodes[0].input[1]].astype(np.int32) - inits[nodes[0].input[3]].astype(np.int32))
    np.testing.assert_array_equal(outputs["u8u8"], outputs["u8s8"])  # the same integers q - zero_point
    with pytest.raises(ValueError, match="integer_matmul"):
        mq.export_onnx(qmodel, inputs, tmp_path / "bad.onnx", integer_matmul="s8s8")


def test_onnx_per_tensor_int8_embedding(tmp_path):
    # its one scale was indexed per row (GatherND out of range for every index above 0)
    torch.manual_seed(0)
    qmodel, _ = mq.quantize(nn.Sequential(nn.Embedding(50, 32)).eval(), dtype="int8", embeddings=True,
                            granularity="per_tensor")
    idx = torch.randint(0, 50, (3, 5))
    with torch.no_grad():
        ours = qmodel(idx)
    y, _ = _run(qmodel, (idx,), tmp_path / "t.onnx", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    assert np.allclose(y, ours.numpy(), rtol=1e-5, atol=1e-6)


def test_half_model_is_refused_with_what_to_do(tmp_path):
    # the twins compute in float32: a .half() model was written with ops ORT refused to load
    model, inputs = _models()["mlp"]
    qmodel = mq.quantize(model, dtype="int8").model.half()
    with pytest.raises(NotImplementedError, match="export_onnx writes float32 models.*model.float"):
        mq.export_onnx(qmodel, (inputs[0].half(),), tmp_path / "h.onnx")
