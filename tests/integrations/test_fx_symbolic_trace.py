"""torch.fx.symbolic_trace can't trace into a quantized layer (its forward picks kernels from the
input's dtype and sizes): a TypeError naming the layer and what works, not torch's bare
"symbolically traced variables cannot be used as inputs to control flow"; and what it says works
does: a Tracer keeping mono-quant's layers as leaves gives a graph with eager's results."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq


class _Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(16, 16)

    def forward(self, x):
        return self.rnn(x)[0]


CASES = {
    "Linear": (lambda: nn.Sequential(nn.Linear(64, 64), nn.ReLU()), lambda: torch.randn(2, 64), "QuantizedLinear"),
    "Conv2d": (lambda: nn.Sequential(nn.Conv2d(8, 8, 3)), lambda: torch.randn(1, 8, 6, 6), "QuantizedConv2d"),
    "Embedding": (lambda: nn.Sequential(nn.Embedding(100, 64)), lambda: torch.randint(0, 100, (3,)),
                  "QuantizedEmbedding"),
    "LSTM": (_Recurrent, lambda: torch.randn(5, 2, 16), "QuantizedLSTM"),
    "Conv1d": (lambda: nn.Sequential(nn.Conv1d(8, 8, 3)), lambda: torch.randn(2, 8, 10), "QuantizedConv1d"),
}


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m, name):
        return type(m).__module__.startswith("mono_quant.") or super().is_leaf_module(m, name)


def _quantized(case):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(CASES[case][0]().eval(), embeddings=True, min_weight_numel=0).model


@pytest.mark.parametrize("case", list(CASES))
def test_symbolic_trace_names_the_layer_and_the_way_out(case):
    with pytest.raises(TypeError, match=rf"^{CASES[case][2]}: torch.fx.symbolic_trace can't trace into .*"
                                        r"is_leaf_module.*torch.export.export"):
        torch.fx.symbolic_trace(_quantized(case))


@pytest.mark.parametrize("case", list(CASES))
def test_a_tracer_keeping_the_layers_as_leaves_works(case):
    q, x = _quantized(case), CASES[case][1]()
    graph = torch.fx.GraphModule(q, _LeafTracer().trace(q))
    with torch.no_grad():
        assert torch.equal(graph(x), q(x))
