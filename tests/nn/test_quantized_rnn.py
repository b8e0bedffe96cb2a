"""QuantizedRNN (nn.RNN, tanh and relu cells): outputs against the float module (SQNR per
format) and against the float nn.RNN run with the dequantized weights (the reference: only
float rounding apart), initial states, unbatched and PackedSequence inputs, save / load
bit-exact, graph capture as QuantizedLSTM / QuantizedGRU, and the skip reasons left."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import mono_quant as mq
from mono_quant.modules import QuantizedLinear, QuantizedRNN

# (dtype, activations, lowest output SQNR in dB against the float module)
OPTIONS = [("int8", "dynamic", 25.0), ("int8", None, 30.0), ("int4", None, 14.0), ("fp16", None, 45.0),
           ("bf16", None, 30.0)]

CASES = {
    "tanh-2layer": lambda: nn.RNN(24, 40, num_layers=2),
    "relu-bidir-batchfirst": lambda: nn.RNN(24, 40, num_layers=2, nonlinearity="relu", bidirectional=True,
                                            batch_first=True),
    "tanh-nobias": lambda: nn.RNN(24, 40, bias=False),
    "relu-nobias-bidir": lambda: nn.RNN(24, 40, nonlinearity="relu", bias=False, bidirectional=True),
}

RUNS = [(case, *OPTIONS[0]) for case in CASES] + [
    (case, *option) for option in OPTIONS[1:] for case in ("tanh-2layer", "relu-bidir-batchfirst")]


def sqnr(ref, out):
    ref, out = ref.float(), out.float()
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean().clamp_min(1e-30)))


def quantized(module, dtype="int8", activations="dynamic"):
    extra = {"group_size": 32} if dtype == "int4" else {}
    return mq.quantize(module, dtype=dtype, activations=activations, **extra)


def dequantized_float_rnn(float_rnn: nn.RNN, q: QuantizedRNN) -> nn.RNN:
    """The float nn.RNN with the quantized module's dequantized weights and its biases."""
    ref = type(float_rnn)(float_rnn.input_size, float_rnn.hidden_size, num_layers=float_rnn.num_layers,
                          nonlinearity=float_rnn.nonlinearity, bias=float_rnn.bias,
                          batch_first=float_rnn.batch_first, bidirectional=float_rnn.bidirectional).eval()
    with torch.no_grad():
        for child in q.child_names():
            part, tail = child.split("_", 1)
            linear = getattr(q, child)
            getattr(ref, f"weight_{part}_{tail}").copy_(linear.dequantized_weight(torch.float32))
            if float_rnn.bias:
                getattr(ref, f"bias_{part}_{tail}").copy_(linear.bias)
    return ref


@pytest.mark.parametrize("case,dtype,activations,min_sqnr", RUNS, ids=[f"{c}-{d}-{a}" for c, d, a, _ in RUNS])
def test_rnn_matches_float(case, dtype, activations, min_sqnr):
    torch.manual_seed(0)
    float_rnn = CASES[case]().eval()
    q, skipped = quantized(float_rnn, dtype, activations)
    assert type(q) is QuantizedRNN and not skipped
    assert q.nonlinearity == float_rnn.nonlinearity
    x = torch.randn(5, 7, 24)
    with torch.no_grad():
        (ref, ref_h), (out, h) = float_rnn(x), q(x)
    for r, o in ((ref, out), (ref_h, h)):
        assert o.shape == r.shape and o.dtype == r.dtype
        assert sqnr(r, o) > min_sqnr


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_weight_only_rnn_is_the_float_rnn_of_its_dequantized_weights(case, dtype):
    torch.manual_seed(1)
    float_rnn = CASES[case]().eval()
    q, _ = quantized(float_rnn, dtype, None)
    ref_rnn = dequantized_float_rnn(float_rnn, q)
    x = torch.randn(7, 5, 24)
    with torch.no_grad():
        for r, o in zip(ref_rnn(x), q(x)):
            torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["tanh-2layer", "relu-bidir-batchfirst"])
def test_initial_states_unbatched_and_packed(case):
    torch.manual_seed(2)
    float_rnn = CASES[case]().eval()
    q, _ = quantized(float_rnn, "int8", None)
    ref_rnn = dequantized_float_rnn(float_rnn, q)
    layers = float_rnn.num_layers * (2 if float_rnn.bidirectional else 1)
    bf = float_rnn.batch_first
    with torch.no_grad():
        # given state, batched and unbatched
        x, h0 = (torch.randn(3, 6, 24) if bf else torch.randn(6, 3, 24)), torch.randn(layers, 3, 40)
        for r, o in zip(ref_rnn(x, h0), q(x, h0)):
            torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)
        for r, o in zip(ref_rnn(x[0] if bf else x[:, 0], h0[:, 0]), q(x[0] if bf else x[:, 0], h0[:, 0])):
            torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)
        # PackedSequence: padding never enters a state
        lengths = torch.tensor([3, 6, 1, 6, 4])
        x = torch.randn(5, 6, 24) if bf else torch.randn(6, 5, 24)
        packed = pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False)
        for state in (None, torch.randn(layers, 5, 40)):
            (ref, ref_h), (out, h) = ref_rnn(packed, state), q(packed, state)
            assert torch.equal(out.batch_sizes, ref.batch_sizes)
            torch.testing.assert_close(out.data, ref.data, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(h, ref_h, rtol=1e-4, atol=1e-5)


def test_children_report_and_bad_inputs():
    result = mq.quantize(nn.Sequential(nn.RNN(16, 32, nonlinearity="relu", bidirectional=True)), dtype="int8")
    rnn = result.model[0]
    assert sorted(rnn.child_names()) == ["hh_l0", "hh_l0_reverse", "ih_l0", "ih_l0_reverse"]
    assert all(type(c) is QuantizedLinear for c in rnn.children())
    assert {layer.name: layer.type for layer in result.report.layers} == {
        "0.ih_l0": "RNN", "0.hh_l0": "RNN", "0.ih_l0_reverse": "RNN", "0.hh_l0_reverse": "RNN"}
    assert result.skipped == [] and "nonlinearity='relu'" in repr(rnn)
    assert rnn.ih_l0.weight.shape == (32, 16)  # the .weight view of each child
    with pytest.raises(RuntimeError, match="input_size"):
        rnn(torch.randn(4, 2, 9))
    with pytest.raises(RuntimeError, match="hidden size"):
        rnn(torch.randn(4, 2, 16), torch.zeros(2, 3, 32))
    with pytest.raises(RuntimeError, match="floating-point"):
        rnn(torch.ones(4, 2, 16, dtype=torch.long))


@pytest.mark.parametrize("dtype,activations", [("int8", "dynamic"), ("int4", None), ("fp16", None)])
def test_save_load_round_trip_bit_exact(tmp_path, dtype, activations):
    torch.manual_seed(3)

    def build():
        return nn.ModuleDict({"tanh": nn.RNN(16, 24, num_layers=2, bidirectional=True),
                              "relu": nn.RNN(16, 24, nonlinearity="relu", batch_first=True, bias=False)})

    q, _ = quantized(build().eval(), dtype, activations)
    path = tmp_path / "m.mq.safetensors"
    mq.save(q, path)
    with torch.device("meta"):
        skeleton = build()
    loaded = mq.load(path, model=skeleton.eval())
    assert type(loaded["tanh"]) is QuantizedRNN and loaded["relu"].nonlinearity == "relu"
    x = torch.randn(5, 2, 16)
    with torch.no_grad():
        for name in ("tanh", "relu"):
            for ref, out in zip(q[name](x), loaded[name](x)):
                assert torch.equal(ref, out)


class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(12, 16, num_layers=2, batch_first=True, nonlinearity="relu", bidirectional=True)
        self.head = nn.Linear(32, 8)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def _tagger(dtype="int8", activations="dynamic"):
    torch.manual_seed(4)
    kw = {"activations": activations} if dtype == "int8" else {}
    qmodel, _ = mq.quantize(_Tagger().eval(), dtype=dtype, min_weight_numel=0, **kw)
    assert type(qmodel.rnn) is QuantizedRNN
    g = torch.Generator().manual_seed(5)
    return qmodel, torch.randn(2, 3, 12, generator=g), torch.randn(2, 3, 12, generator=g) * 2


def test_compile_fullgraph_matches_eager():
    qmodel, a, b = _tagger()
    torch._dynamo.reset()
    compiled = torch.compile(qmodel, fullgraph=True)
    with torch.no_grad():
        for x in (a, b):
            torch.testing.assert_close(compiled(x), qmodel(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,activations", [("int8", "dynamic"), ("int4", None)])
def test_export_follows_its_input_and_guards_the_length(dtype, activations):
    qmodel, a, b = _tagger(dtype, activations)
    program = torch.export.export(qmodel, (a,)).module()
    with torch.no_grad():
        for x in (a, b):
            torch.testing.assert_close(program(x), qmodel(x), rtol=1e-5, atol=1e-5)
        with pytest.raises(Exception):  # torch's guard: never the example's step count replayed
            program(torch.randn(2, 5, 12))


def test_jit_trace_raises_naming_the_layer():
    qmodel, a, _ = _tagger()
    with pytest.raises(RuntimeError, match="QuantizedRNN cannot be traced with torch.jit.trace"):
        torch.jit.trace(qmodel, (a,), check_trace=False)


def test_export_onnx_runs_in_onnxruntime(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    qmodel, a, b = _tagger("int8", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = mq.export_onnx(qmodel, (a,), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    with torch.no_grad():
        for x in (a, b):
            assert sqnr(qmodel(x), torch.from_numpy(session.run(None, {feed: x.numpy()})[0])) > 40


def test_subclass_of_rnn_stays_float_with_reason():
    class MyRNN(nn.RNN):
        pass

    _, skipped = mq.quantize(nn.Sequential(MyRNN(8, 8), nn.Linear(8, 8)))
    assert [(s.name, s.type) for s in skipped] == [("0", "MyRNN")]
    assert "only exact nn.LSTM, nn.GRU and nn.RNN" in skipped[0].reason


class _FlattensFirst(nn.Module):
    """Speech models and CRNNs call flatten_parameters() before each forward."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        self.rnn.flatten_parameters()
        return self.rnn(x)[0]


@pytest.mark.parametrize("make", [lambda: nn.LSTM(8, 16, num_layers=2, bidirectional=True, proj_size=4),
                                  lambda: nn.GRU(8, 16, bias=False), lambda: nn.RNN(8, 16, batch_first=True)],
                         ids=["lstm", "gru", "rnn"])
def test_flatten_parameters_and_all_weights_as_the_float_module(make):
    torch.manual_seed(0)
    rnn = make()
    model = _FlattensFirst(rnn)
    qmodel, _ = mq.quantize(model, "int8")
    x = torch.randn(5, 3, 8)
    torch.testing.assert_close(qmodel(x), model(x), atol=0.05, rtol=0.05)  # (it raised AttributeError)
    q = qmodel.rnn
    assert q._flat_weights_names == rnn._flat_weights_names
    for theirs, ours in zip(rnn.all_weights, q.all_weights):
        assert len(theirs) == len(ours)
        for t, o in zip(theirs, ours):
            assert o.shape == t.shape
            torch.testing.assert_close(o * 1, t.detach(), atol=0.02, rtol=0)


class _Outputs(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


@pytest.mark.parametrize("example_batch", [2, 4])
def test_export_with_a_dynamic_batch_of_a_two_layer_bidirectional_lstm(example_batch):
    """scan's tracer read the sizes of the state slices' base ([layers * directions, B, H]): with an
    example batch equal to one of them the export pinned the batch ("specialized it to be a constant")."""
    from torch.export import Dim
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 12, num_layers=2, bidirectional=True, batch_first=True).eval()
    model = _Outputs(mq.quantize(lstm, "int8").model)
    program = torch.export.export(model, (torch.randn(example_batch, 5, 8),),
                                  dynamic_shapes=({0: Dim("B", max=16), 1: Dim("T", min=2, max=64)},)).module()
    with torch.no_grad():
        for batch, steps in ((1, 3), (3, 7), (5, 4)):
            x = torch.randn(batch, steps, 8)
            torch.testing.assert_close(program(x), model(x), rtol=1e-5, atol=1e-5)
