"""Graph capture of a QuantizedMultiheadAttention with add_bias_kv=True (its float bias_k /
bias_v beside the quantized projections), add_zero_attn both ways: torch.compile(fullgraph=True),
torch.export.export, torch.jit.trace and export_onnx give the eager outputs and follow their input."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.modules import QuantizedMultiheadAttention


class _Attention(nn.Module):
    def __init__(self, need_weights, add_zero_attn):
        super().__init__()
        self.att = nn.MultiheadAttention(16, 4, batch_first=True, add_bias_kv=True, add_zero_attn=add_zero_attn)
        with torch.no_grad():
            self.att.bias_k.normal_()
            self.att.bias_v.normal_()
        self.need_weights = need_weights
        self.head = nn.Linear(16, 8)

    def forward(self, x):
        out, weights = self.att(x, x, x, need_weights=self.need_weights)
        return self.head(out) if weights is None else self.head(out) + weights.sum()


def _quantized(need_weights=False, add_zero_attn=False, dtype="int8", activations="dynamic"):
    torch.manual_seed(0)
    kw = {"activations": activations} if dtype == "int8" else {}
    qmodel, skipped = mq.quantize(_Attention(need_weights, add_zero_attn).eval(), dtype=dtype, min_weight_numel=0,
                                  **kw)
    assert isinstance(qmodel.att, QuantizedMultiheadAttention) and qmodel.att.bias_k is not None and not skipped
    return qmodel


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 16, generator=g), torch.randn(2, 3, 16, generator=g) * 2


CASES = [(False, False), (True, False), (False, True), (True, True)]
IDS = ["plain", "weights", "zero_attn", "weights-zero_attn"]


@pytest.mark.parametrize("need_weights,add_zero_attn", CASES, ids=IDS)
def test_compile_fullgraph_matches_eager(need_weights, add_zero_attn):
    qmodel = _quantized(need_weights, add_zero_attn)
    torch._dynamo.reset()
    compiled = torch.compile(qmodel, fullgraph=True)
    with torch.no_grad():
        for x in _inputs():
            torch.testing.assert_close(compiled(x), qmodel(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("need_weights,add_zero_attn", CASES, ids=IDS)
@pytest.mark.parametrize("dtype,activations", [("int8", "dynamic"), ("int4", None)])
def test_export_and_trace_follow_their_input(need_weights, add_zero_attn, dtype, activations):
    qmodel = _quantized(need_weights, add_zero_attn, dtype, activations)
    a, b = _inputs()
    program = torch.export.export(qmodel, (a,)).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(qmodel, (a,), check_trace=False)
    with torch.no_grad():
        for x in (a, b):
            torch.testing.assert_close(program(x), qmodel(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(traced(x), qmodel(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(program(a), program(b))


def _sqnr(ref, y):
    ref, y = torch.as_tensor(ref).double(), torch.as_tensor(y).double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - y).pow(2).sum().clamp_min(1e-30)))


@pytest.mark.parametrize("need_weights,add_zero_attn,dtype,activations",
                         [(False, False, "int8", "dynamic"), (True, True, "int4", None)])
def test_export_onnx_runs_in_onnxruntime(tmp_path, need_weights, add_zero_attn, dtype, activations):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    qmodel = _quantized(need_weights, add_zero_attn, dtype, activations)
    a, b = _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = mq.export_onnx(qmodel, (a,), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    with torch.no_grad():
        for x, other in ((a, b), (b, a)):
            y = session.run(None, {feed: x.numpy()})[0]
            assert _sqnr(qmodel(x), y) > 30  # ONNX's per-tensor activation noise, never another input's output
            assert _sqnr(qmodel(x), y) > _sqnr(qmodel(other), y) + 20
