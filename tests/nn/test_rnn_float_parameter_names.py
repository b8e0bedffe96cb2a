"""QuantizedLSTM / GRU / RNN answer the float module's parameter names (``weight_ih_l0``,
``bias_hh_l1_reverse``, ``weight_hr_l0``...) with their children's: the read-only dequantized
``.weight`` view a QuantizedLinear gives (the float parameter's shape) and the float bias.  Code
reading ``lstm.weight_ih_l0`` got AttributeError; assigning one is refused (it would be ignored)."""
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.torch_compat import DequantizedWeightView

CASES = {
    "lstm-2-layers-bidirectional": (nn.LSTM, dict(num_layers=2, bidirectional=True)),
    "lstm-proj": (nn.LSTM, dict(proj_size=4)),
    "gru-no-bias": (nn.GRU, dict(bias=False)),
    "rnn-relu": (nn.RNN, dict(nonlinearity="relu")),
}


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
@pytest.mark.parametrize("case", CASES)
def test_every_float_parameter_name_reads_the_childs(case, dtype):
    torch.manual_seed(0)
    cls, kwargs = CASES[case]
    model = nn.Sequential(cls(8, 16, **kwargs))
    qmodel, _ = mq.quantize(model, dtype, **({"group_size": None} if dtype == "int4" else {}))
    float_layer, layer = model[0], qmodel[0]
    for name, parameter in float_layer.named_parameters():
        value = getattr(layer, name)
        kind, part, tail = name.split("_", 2)
        child = getattr(layer, f"{part}_{tail}")
        assert value is getattr(child, kind)
        assert value.shape == parameter.shape and value.dtype == parameter.dtype
        if kind == "weight":
            assert isinstance(value, DequantizedWeightView) and not value.requires_grad
            assert torch.allclose(value.dequantize(), parameter, atol=0.05)
        else:
            assert torch.equal(value, parameter)
    assert hasattr(layer, "weight_ih_l0") and not hasattr(layer, "weight_ih_l9")
    assert hasattr(layer, "bias_ih_l0") == float_layer.bias  # bias=False: neither has bias_*


def test_assigning_one_is_refused_and_other_names_are_as_before():
    torch.manual_seed(0)
    qmodel, _ = mq.quantize(nn.Sequential(nn.LSTM(8, 16)))
    layer = qmodel[0]
    with pytest.raises(AttributeError, match=r"QuantizedLSTM\.weight_ih_l0 is read-only: it reads the ih_l0 "
                                             r"child's weight.*Change the float LSTM and quantize it again"):
        layer.weight_ih_l0 = nn.Parameter(torch.zeros(64, 8))
    with pytest.raises(AttributeError, match="bias_hh_l0 is read-only"):
        layer.bias_hh_l0 = None
    with pytest.raises(AttributeError, match="'QuantizedLSTM' object has no attribute 'weight_xx_l0'"):
        layer.weight_xx_l0
    layer.weight_note = "a plain attribute"  # (not a float parameter's name: set as on any module)
    assert layer.weight_note == "a plain attribute" and "weight_ih_l0" not in dict(layer.named_parameters())
