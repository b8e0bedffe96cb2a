"""Graph capture of the composites (QuantizedLSTM / QuantizedGRU / QuantizedMultiheadAttention):
torch.compile(fullgraph=True), torch.export.export and export_onnx give the eager outputs
and follow their input; torch.jit.trace of an RNN (a Python time loop) raises instead of
freezing the example's sequence length."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq


class _Rnn(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.rnn = cls(12, 16, num_layers=2, batch_first=True, bidirectional=cls is nn.GRU)
        self.head = nn.Linear(16 * (2 if cls is nn.GRU else 1), 8)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


class _Attention(nn.Module):
    def __init__(self, need_weights):
        super().__init__()
        self.att = nn.MultiheadAttention(16, 4, batch_first=True)
        self.need_weights = need_weights
        self.head = nn.Linear(16, 8)

    def forward(self, x):
        out, weights = self.att(x, x, x, need_weights=self.need_weights)
        return self.head(out) if weights is None else self.head(out) + weights.sum()


def _model(name):
    torch.manual_seed(0)
    return {"lstm": lambda: _Rnn(nn.LSTM), "gru": lambda: _Rnn(nn.GRU), "mha": lambda: _Attention(False),
            "mha_weights": lambda: _Attention(True)}[name]().eval()


def _inputs(name):
    g = torch.Generator().manual_seed(1)
    features = 16 if name.startswith("mha") else 12
    return torch.randn(2, 3, features, generator=g), torch.randn(2, 3, features, generator=g) * 2


def _quantized(name, dtype, activations="dynamic"):
    kw = {"activations": activations} if dtype == "int8" else {}
    qmodel, _ = mq.quantize(_model(name), dtype=dtype, min_weight_numel=0, **kw)
    composite = qmodel.att if name.startswith("mha") else qmodel.rnn
    assert type(composite).__name__.startswith("Quantized")
    return qmodel


NAMES = ["lstm", "gru", "mha", "mha_weights"]


@pytest.mark.parametrize("name", NAMES)
def test_compile_fullgraph_matches_eager(name):
    qmodel = _quantized(name, "int8")
    a, b = _inputs(name)
    torch._dynamo.reset()
    compiled = torch.compile(qmodel, fullgraph=True)
    with torch.no_grad():
        for x in (a, b):
            torch.testing.assert_close(compiled(x), qmodel(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,dtype,activations", [
    ("lstm", "int8", "dynamic"), ("lstm", "int4", None), ("gru", "int8", None), ("gru", "fp16", None),
    ("mha", "int8", "dynamic"), ("mha", "int4", None), ("mha_weights", "int8", None)])
def test_export_follows_its_input(name, dtype, activations):
    qmodel = _quantized(name, dtype, activations)
    a, b = _inputs(name)
    program = torch.export.export(qmodel, (a,)).module()
    with torch.no_grad():
        for x in (a, b):
            torch.testing.assert_close(program(x), qmodel(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(program(a), program(b))


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_exported_rnn_refuses_another_sequence_length(name):
    qmodel = _quantized(name, "int8")
    a, _ = _inputs(name)
    program = torch.export.export(qmodel, (a,)).module()
    with pytest.raises(Exception):  # torch's guard: never the example's step count replayed
        program(torch.randn(2, 5, 12))


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_jit_trace_of_an_rnn_raises_naming_the_layer(name):
    qmodel = _quantized(name, "int8")
    a, _ = _inputs(name)
    layer = "QuantizedLSTM" if name == "lstm" else "QuantizedGRU"
    with pytest.raises(RuntimeError, match=f"{layer} cannot be traced with torch.jit.trace"):
        torch.jit.trace(qmodel, (a,), check_trace=False)


def test_jit_trace_of_attention_follows_its_input():
    qmodel = _quantized("mha", "int8")
    a, b = _inputs("mha")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(qmodel, (a,), check_trace=False)
    with torch.no_grad():
        torch.testing.assert_close(traced(b), qmodel(b), rtol=1e-5, atol=1e-5)
        longer = torch.randn(3, 5, 16)
        torch.testing.assert_close(traced(longer), qmodel(longer), rtol=1e-5, atol=1e-5)


def _sqnr(ref, y):
    ref, y = torch.as_tensor(ref).double(), torch.as_tensor(y).double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - y).pow(2).sum().clamp_min(1e-30)))


@pytest.mark.parametrize("name,dtype,activations", [("lstm", "int8", "dynamic"), ("gru", "int4", None),
                                                    ("mha", "int8", "dynamic")])
def test_export_onnx_runs_in_onnxruntime_and_follows_its_input(tmp_path, name, dtype, activations):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    qmodel = _quantized(name, dtype, activations)
    a, b = _inputs(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = mq.export_onnx(qmodel, (a,), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    with torch.no_grad():
        for x, other in ((a, b), (b, a)):
            y = session.run(None, {feed: x.numpy()})[0]
            # ONNX quantizes activations per tensor (ours: per row): noise, never another input's output
            assert _sqnr(qmodel(x), y) > 30
            assert _sqnr(qmodel(x), y) > _sqnr(qmodel(other), y) + 20
