"""quantize(state_dict) of a layer that stores tensors in place of its weight (pruned: weight_orig /
weight_mask; weight_norm: weight_g / weight_v; a parametrization: parametrizations.weight.original*)
lists it in ``skipped`` with what to do: it was left float silently ("1 quantized, 0 skipped")."""
import warnings

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn
from torch.nn.utils import parametrizations

import mono_quant as mq


def _prune(m):
    prune.l1_unstructured(m, "weight", 0.3)


def _old_weight_norm(m):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.nn.utils.weight_norm(m)


CASES = {"prune": (_prune, "prune.remove"), "weight_norm": (_old_weight_norm, "remove_weight_norm"),
         "parametrized_weight_norm": (parametrizations.weight_norm, "remove_parametrizations"),
         "spectral_norm": (parametrizations.spectral_norm, "remove_parametrizations")}


def _model(case):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128))
    CASES[case][0](model[0])
    return model


@pytest.mark.parametrize("case", CASES)
def test_a_state_dict_layer_without_a_plain_weight_is_listed(case):
    model = _model(case)
    result = mq.quantize(model.state_dict(), "int8")
    assert [r.name for r in result.report.layers] == ["2"]
    assert [s.name for s in result.skipped] == ["0"]
    assert "holds no plain weight" in result.skipped[0].reason and CASES[case][1] in result.skipped[0].reason
    for key, tensor in model.state_dict().items():  # the layer's tensors are copied as they are
        if key.startswith("0."):
            assert torch.equal(result.state_dict()[key], tensor)


@pytest.mark.parametrize("case", ["prune", "weight_norm"])
def test_with_the_model_a_hook_computed_weight_is_listed_not_a_key_error(case):
    # (a parametrization was listed already; these raised "state_dict has no '0.weight'")
    model = _model(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mq.quantize(model.state_dict(), "int8", model=model)
    assert [s.name for s in result.skipped] == ["0"] and "weight_orig / weight_v" in result.skipped[0].reason
    assert [r.name for r in result.report.layers] == ["2"]
