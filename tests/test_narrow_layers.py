"""Narrow int8 layers stay float (narrow.py): packed int8 pads a Linear's outputs to a panel of
16 rows, so with 1-4 outputs of a float32 weight (up to 8 of a float16 / bfloat16 one) the int8
codes and scales take as many bytes as the float weight or more. Such a layer is left float and
listed in ``skipped`` with the sizes, unless ``include`` names it exactly."""
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.strictness import LargerModelWarning


def _model(outputs, dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, outputs)).to(dtype)


@pytest.mark.parametrize("dtype,narrow,wide", [(torch.float32, 4, 5), (torch.float16, 8, 9),
                                                (torch.bfloat16, 8, 9)])
def test_narrow_layer_stays_float_with_the_sizes(dtype, narrow, wide):
    for outputs in range(1, narrow + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("error", LargerModelWarning)  # the model no longer grows
            result = mq.quantize(_model(outputs, dtype), "int8")
        assert type(result.model[2]) is nn.Linear and isinstance(result.model[0], mq.QuantizedLinear)
        (skip,) = result.skipped
        assert skip.name == "2" and skip.type == "Linear"
        assert skip.reason.startswith(f"narrow layer: its {outputs} output") and "grow, not shrink" in skip.reason
        assert "include=['2']" in skip.reason
    result = mq.quantize(_model(wide, dtype), "int8")
    assert isinstance(result.model[2], mq.QuantizedLinear) and result.skipped == []


def test_an_exact_include_quantizes_it_anyway():
    model = _model(2)
    result = mq.quantize(model, "int8", include=["0", "2"])
    assert isinstance(result.model[2], mq.QuantizedLinear) and result.skipped == []
    # a glob or a type asks for many layers, not this one
    for include in (["*"], [nn.Linear]):
        result = mq.quantize(model, "int8", include=include)
        assert [s.name for s in result.skipped] == ["2"] and "narrow" in result.skipped[0].reason


@pytest.mark.parametrize("dtype", ["int4", "fp16", "bf16", "uint8"])
def test_other_formats_are_not_affected(dtype):
    result = mq.quantize(_model(2), dtype, **({"group_size": None} if dtype == "int4" else {}))
    assert isinstance(result.model[2], mq.QuantizedModule) and result.skipped == []


def test_state_dict_and_checkpoint_agree(tmp_path):
    sd = _model(3).state_dict()
    result = mq.quantize(sd, "int8")
    assert [s.name for s in result.skipped] == ["2"] and "narrow" in result.skipped[0].reason
    assert torch.equal(result.state_dict()["2.weight"], sd["2.weight"])
    save_file(sd, str(tmp_path / "m.safetensors"))
    from_file = mq.quantize_checkpoint(tmp_path / "m.safetensors", tmp_path / "q.safetensors", dtype="int8")
    assert from_file.skipped == result.skipped
    assert torch.equal(mq.load(tmp_path / "q.safetensors")["2.weight"], sd["2.weight"])
    named = mq.quantize(sd, "int8", include=["0", "2"])
    assert named.skipped == [] and len(named.report.layers) == 2
