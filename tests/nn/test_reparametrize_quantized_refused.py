"""torch's reparametrizations of a quantized layer's weight (parametrize / parametrizations.*,
weight_norm, the hook-based spectral_norm, prune) are refused with a clear NotImplementedError,
before anything changes.  They
took the dequantized ``.weight`` view for a Parameter or buffer: on an fp16 / bf16 layer
parametrize detached the stored weight buffer; elsewhere torch's own puzzling errors ("cannot
assign 'torch.FloatTensor' object to parameter 'weight_orig'", "does not have a parameter, a
buffer, or a parametrized element with name 'weight'", KeyError 'weight': spectral_norm reads
``module._parameters["weight"]`` straight)."""
import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize, prune

import mono_quant as mq


class _Double(nn.Module):
    def forward(self, w):
        return w * 2


REPARAMETRIZE = {
    "parametrizations.weight_norm": lambda l: parametrizations.weight_norm(l),
    "parametrizations.spectral_norm": lambda l: parametrizations.spectral_norm(l),
    "parametrizations.orthogonal": lambda l: parametrizations.orthogonal(l),
    "register_parametrization": lambda l: parametrize.register_parametrization(l, "weight", _Double()),
    "weight_norm": lambda l: torch.nn.utils.weight_norm(l),
    "spectral_norm": lambda l: torch.nn.utils.spectral_norm(l),
    "prune.l1_unstructured": lambda l: prune.l1_unstructured(l, "weight", 0.5),
    "prune.random_unstructured": lambda l: prune.random_unstructured(l, "weight", 0.5),
    "prune.ln_structured": lambda l: prune.ln_structured(l, "weight", 0.5, n=2, dim=0),
    "prune.identity": lambda l: prune.identity(l, "weight"),
}


def _quantized(dtype, kind="linear"):
    torch.manual_seed(0)
    model, x = ((nn.Sequential(nn.Linear(32, 16)), torch.randn(3, 32)) if kind == "linear"
                else (nn.Sequential(nn.Conv2d(4, 8, 3)), torch.randn(2, 4, 6, 6)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel, _ = mq.quantize(model, dtype, min_weight_numel=0)
    return qmodel, x


def _state(qmodel):
    return type(qmodel[0]), {k: v.clone() for k, v in qmodel.state_dict().items()}, dict(qmodel[0]._forward_pre_hooks)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("how", list(REPARAMETRIZE), ids=str)
@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16", "bf16"])
def test_reparametrizing_the_weight_is_refused_and_changes_nothing(dtype, how):
    qmodel, x = _quantized(dtype)
    before_y = qmodel(x)
    cls, state, hooks = _state(qmodel)
    with pytest.raises(NotImplementedError, match=r"torch\.nn\.utils\..* on the weight of QuantizedLinear \("
                                                  + dtype + r"\).*Apply it to the float model and quantize"):
        REPARAMETRIZE[how](qmodel[0])
    cls_after, state_after, hooks_after = _state(qmodel)
    assert cls_after is cls and hooks_after == hooks and state_after.keys() == state.keys()
    assert all(torch.equal(state[k], state_after[k]) for k in state)
    assert not parametrize.is_parametrized(qmodel[0])
    assert torch.equal(qmodel(x), before_y)


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_conv_layers_too(dtype):
    qmodel, _ = _quantized(dtype, "conv")
    with pytest.raises(NotImplementedError, match="QuantizedConv2d"):
        prune.l1_unstructured(qmodel[0], "weight", 0.3)
    with pytest.raises(NotImplementedError, match="QuantizedConv2d"):
        parametrizations.weight_norm(qmodel[0])
    with pytest.raises(NotImplementedError, match=r"torch\.nn\.utils\.spectral_norm on the weight of QuantizedConv2d"):
        torch.nn.utils.spectral_norm(qmodel[0])


def test_spectral_norm_of_the_bias_and_other_missing_parameters_are_torchs_as_before():
    """The guard on ``_parameters`` answers only spectral_norm's lookup of "weight": any other missing
    name is a KeyError, a copy keeps the guard, and spectral_norm of the float bias still works."""
    qmodel, x = _quantized("int8")
    layer = copy.deepcopy(qmodel[0])
    with pytest.raises(KeyError):
        layer._parameters["weight"]  # (not from spectral_norm: a plain KeyError)
    with pytest.raises(NotImplementedError, match="spectral_norm"):
        torch.nn.utils.spectral_norm(layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.nn.utils.spectral_norm(layer, name="bias", dim=0)
    assert "bias_orig" in layer._parameters and layer(x).shape == (3, 16)


def test_the_float_bias_may_still_be_pruned_and_parametrized():
    qmodel, x = _quantized("int8")
    layer = copy.deepcopy(qmodel[0])
    prune.l1_unstructured(layer, "bias", 0.5)
    assert int((layer.bias == 0).sum()) == 8
    prune.remove(layer, "bias")
    parametrize.register_parametrization(layer, "bias", _Double())
    assert parametrize.is_parametrized(layer, "bias") and not parametrize.is_parametrized(layer, "weight")
    layer(x)


def test_is_parametrized_and_quantize_again_still_work():
    """Reading ``parametrizations`` (what is_parametrized does) is refused only inside
    register_parametrization; quantize() of a model holding quantized layers asks it of each."""
    qmodel, x = _quantized("int8")
    assert not parametrize.is_parametrized(qmodel[0]) and getattr(qmodel[0], "parametrizations", None) is None
    mixed = nn.Sequential(qmodel[0], nn.Linear(16, 16))
    again, skipped = mq.quantize(mixed, "int8")
    assert [s.name for s in skipped] == ["0"] and type(again[1]).__name__ == "QuantizedLinear"
