"""QuantizedLSTM / QuantizedGRU / QuantizedRNN under graph capture beyond one sequence length:
torch.export with a dynamic sequence length and torch.compile over several lengths (the time
loop as torch's scan), the padded batch with ``lengths=`` (a PackedSequence's semantics that
fullgraph compile and export capture), and the clear errors for a PackedSequence there."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils._pytree import tree_leaves

import mono_quant as mq

CASES = {
    "lstm-proj": lambda: nn.LSTM(12, 16, batch_first=True, proj_size=8),
    "gru-2layer-bidir": lambda: nn.GRU(12, 16, num_layers=2, batch_first=True, bidirectional=True),
    "rnn-relu-bidir": lambda: nn.RNN(12, 16, nonlinearity="relu", batch_first=True, bidirectional=True),
}


class _Wrap(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths=None):
        return self.rnn(x) if lengths is None else self.rnn(x, lengths=lengths)


def _quantized(case, dtype="int8", activations="dynamic"):
    torch.manual_seed(0)
    kw = {"activations": activations} if dtype == "int8" else {"group_size": 32} if dtype == "int4" else {}
    q = mq.quantize(CASES[case]().eval(), dtype=dtype, min_weight_numel=0, **kw).model
    assert type(q).__name__.startswith("Quantized")
    return q


def _assert_same(a, b, exact=True):
    for x, y in zip(tree_leaves(a), tree_leaves(b), strict=True):
        if exact:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


RUNS = [("lstm-proj", "int8", "dynamic"), ("gru-2layer-bidir", "int4", None), ("rnn-relu-bidir", "fp16", None)]


@pytest.mark.parametrize("case,dtype,activations", RUNS, ids=[f"{c}-{d}" for c, d, _ in RUNS])
def test_export_with_a_dynamic_sequence_length(case, dtype, activations):
    q = _quantized(case, dtype, activations)
    steps = torch.export.Dim("steps", min=2, max=256)
    program = torch.export.export(_Wrap(q), (torch.randn(3, 6, 12),), dynamic_shapes=({1: steps},)).module()
    with torch.no_grad():
        for length in (2, 6, 17):
            x = torch.randn(3, length, 12)
            _assert_same(program(x), q(x), exact=False)


# inductor once (its scan lowering around our ops), the other case through aot_eager: the same
# captured graphs without a cold inductor build of ~13 s on a 2-core host
@pytest.mark.parametrize("case,backend", [("lstm-proj", "inductor"), ("rnn-relu-bidir", "aot_eager")])
def test_compile_fullgraph_over_several_lengths(case, backend):
    q = _quantized(case)
    torch._dynamo.reset()
    # (the second length recompiles with a symbolic one: scan)
    compiled = torch.compile(q, fullgraph=True, backend=backend)
    with torch.no_grad():
        for length in (3, 5, 9):
            x = torch.randn(2, length, 12)
            _assert_same(compiled(x), q(x), exact=False)


@pytest.mark.parametrize("case", list(CASES))
def test_lengths_keyword_is_the_packed_sequence_padded(case):
    q = _quantized(case)
    x, lengths = torch.randn(4, 6, 12), torch.tensor([6, 2, 0, 4])
    nonzero = lengths > 0  # a PackedSequence can't hold an empty sequence
    packed = pack_padded_sequence(x[nonzero], lengths[nonzero], batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        out, state = q(x, lengths=lengths)
        ref_out, ref_state = q(packed)
        ref_out = pad_packed_sequence(ref_out, batch_first=True, total_length=6)[0]
        # (another batch size: the int8 kernels may block the rows otherwise, float rounding apart)
        torch.testing.assert_close(out[nonzero], ref_out, rtol=1e-5, atol=1e-6)
        for s, r in zip(tree_leaves(state), tree_leaves(ref_state)):
            torch.testing.assert_close(s[:, nonzero], r, rtol=1e-5, atol=1e-6)
        assert not out[2].any() and not out[1, 2:].any()  # zero past each end
        # an empty sequence keeps its initial state
        hx = q(x)[1]
        for s, h in zip(tree_leaves(q(x, hx, lengths=lengths)[1]), tree_leaves(hx)):
            assert torch.equal(s[:, 2], h[:, 2])
        # full lengths: the plain forward
        _assert_same(q(x, lengths=torch.full((4,), 6)), q(x))


@pytest.mark.parametrize("case", ["gru-2layer-bidir"])  # reverse direction, two layers
def test_lengths_keyword_compiles_fullgraph_and_exports(case):
    q = _quantized(case)
    x, lengths = torch.randn(3, 6, 12), torch.tensor([6, 2, 4])
    with torch.no_grad():
        expected = q(x, lengths=lengths)
        torch._dynamo.reset()
        _assert_same(torch.compile(_Wrap(q), fullgraph=True)(x, lengths), expected, exact=False)
        steps = torch.export.Dim("steps", min=2, max=256)
        program = torch.export.export(_Wrap(q), (x, lengths), dynamic_shapes=({1: steps}, None)).module()
        _assert_same(program(x, lengths), expected, exact=False)
        longer, longer_lengths = torch.randn(3, 11, 12), torch.tensor([11, 3, 7])
        _assert_same(program(longer, longer_lengths), q(longer, lengths=longer_lengths), exact=False)


def test_packed_sequence_under_fullgraph_compile_and_export_says_what_works():
    q = _quantized("lstm-proj")
    x, lengths = torch.randn(3, 6, 12), torch.tensor([6, 2, 4])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"rnn\(padded, hx, lengths=lengths\)"):  # dynamo's refusal: any backend
        torch.compile(_Wrap(q), fullgraph=True, backend="aot_eager")(packed)
    torch._dynamo.reset()
    with torch.no_grad():  # without fullgraph: unpacked in eager, the rest compiled (the graph break is dynamo's)
        _assert_same(torch.compile(_Wrap(q), backend="aot_eager")(packed), q(packed), exact=False)
    with pytest.raises(RuntimeError, match=r"torch.export cannot capture a PackedSequence.*lengths=lengths"):
        torch.export.export(_Wrap(q), (packed,))


def test_bad_lengths_raise():
    q = _quantized("gru-2layer-bidir")
    x = torch.randn(3, 6, 12)
    with pytest.raises(ValueError, match="between 0 and the padded length 6"):
        q(x, lengths=torch.tensor([7, 1, 1]))
    with pytest.raises(ValueError, match="one length per sequence"):
        q(x, lengths=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="one length per sequence"):
        q(x, lengths=torch.tensor([1.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match="must be a tensor"):
        q(x, lengths=[1, 1, 1])
    with pytest.raises(ValueError, match="batched 3-D"):
        q(x[0], lengths=torch.tensor([3]))
    packed = pack_padded_sequence(x, torch.tensor([6, 2, 4]), batch_first=True, enforce_sorted=False)
    with pytest.raises(ValueError, match="PackedSequence carries its own"):
        q(packed, lengths=torch.tensor([6, 2, 4]))
