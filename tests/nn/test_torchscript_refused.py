"""torch.jit.script on a quantized model: NotImplementedError naming the layer type and what works
(torch.compile, torch.export, torch.jit.trace), instead of TorchScript's frontend failing inside
mono-quant's code ("Unknown type annotation: 'bool'", "Can't redefine method: __format_getter")."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


@pytest.mark.parametrize("dtype,options", [("int8", {}), ("int8", {"activations": None}), ("uint8", {}),
                                           ("int4", {}), ("fp16", {}), ("bf16", {})])
def test_script_names_the_layer_and_the_ways_that_work(dtype, options):
    qmodel, _ = mq.quantize(_mlp(), dtype, **options)
    x = torch.randn(3, 32)
    expected = qmodel(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation warning
        with pytest.raises(NotImplementedError, match=r"torch.jit.script can't compile QuantizedLinear.*"
                                                      r"torch.compile, torch.export.export or torch.jit.trace"):
            torch.jit.script(qmodel)
        traced = torch.jit.trace(qmodel, x)  # the way the message points to works
    assert torch.equal(traced(x), expected)
    assert torch.equal(qmodel(x), expected)


def test_script_of_composites_and_embeddings():
    model = nn.ModuleDict({"lstm": nn.LSTM(16, 16), "attn": nn.MultiheadAttention(16, 2), "emb": nn.Embedding(10, 16)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel, _ = mq.quantize(model, "int8", embeddings=True)
        for name, match in [("lstm", "QuantizedLSTM.*torch.compile or torch.export.export"),
                            ("attn", "QuantizedMultiheadAttention.*torch.compile or torch.export.export"),
                            ("emb", "QuantizedEmbedding")]:
            with pytest.raises(NotImplementedError, match=f"torch.jit.script can't compile {match}"):
                torch.jit.script(qmodel[name])


def test_script_of_a_static_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel, _ = mq.quantize(model, "int8", activations="static", calibration=torch.randn(128, 16))
        with pytest.raises(NotImplementedError, match="can't compile StaticInt8Model.*torch.compile"):
            torch.jit.script(qmodel)


def test_a_scripted_float_model_still_scripts():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(_mlp())
    assert scripted(torch.randn(2, 32)).shape == (2, 8)
