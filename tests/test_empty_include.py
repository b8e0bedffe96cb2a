"""include=[] selects no layer (as quanto's include): it quantized every layer, as include=None,
so a filter that came out empty (include=[n for n in names if ...]) quantized the whole model."""
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.strictness import NothingQuantizedWarning


def _model():
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.mark.parametrize("empty", [[], ()], ids=["list", "tuple"])
def test_empty_include_quantizes_nothing_and_says_why(empty):
    with pytest.warns(NothingQuantizedWarning):
        result = mq.quantize(_model(), include=empty)
    assert result.report.layers == []
    assert [s.name for s in result.skipped] == ["0", "2"]
    assert all("include is empty" in s.reason and "include=None" in s.reason for s in result.skipped)
    assert type(result.model[0]) is nn.Linear


def test_empty_include_on_a_state_dict():
    with pytest.warns(NothingQuantizedWarning):
        result = mq.quantize({"fc.weight": torch.randn(64, 64)}, include=[])
    assert result.report.layers == []


def test_none_and_empty_exclude_still_quantize_everything():
    assert len(mq.quantize(_model(), include=None).report.layers) == 2
    assert len(mq.quantize(_model(), exclude=[]).report.layers) == 2
