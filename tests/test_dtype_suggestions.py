"""An unknown dtype name says which one was probably meant (and still lists them all)."""
import pytest
import torch
from torch import nn

import mono_quant as mq


@pytest.mark.parametrize("typo, meant", [("in8", "int8"), ("int9", "int8"), ("INT 8", "int8"), ("fp61", "fp16"),
                                         ("bfloat", "bf16"), ("uint4", "int4"), ("f16", "fp16")])
def test_close_names_are_suggested(typo, meant):
    with pytest.raises(mq.ConfigError, match=f"did you mean '{meant}'\\?") as info:
        mq.quantize(nn.Linear(4, 4), dtype=typo)
    assert "expected one of 'int8', 'uint8', 'int4', 'fp16', 'bf16'" in str(info.value)


@pytest.mark.parametrize("unknown", ["q4", torch.qint8, 8])
def test_nothing_close_lists_the_names_only(unknown):
    with pytest.raises(ValueError, match="unknown dtype") as info:
        mq.get_qtype(unknown)
    assert "did you mean" not in str(info.value)
