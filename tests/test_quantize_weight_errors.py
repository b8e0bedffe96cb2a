"""quantize_weight() raises ConfigError (a MonoQuantError and a ValueError) for a bad option, as
quantize() does: an unknown dtype, a bad axis, int4 group size or method (it raised plain
ValueError, which `except mq.MonoQuantError` missed)."""
import pytest
import torch

import mono_quant as mq


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="int9"), "unknown dtype 'int9'"),
    (dict(dtype="int8", axis=5), "axis 5 is out of range"),
    (dict(dtype="int4", group_size=48), "group_size must be a positive multiple of 32"),
    (dict(dtype="int4", method="best"), "method must be one of"),
    (dict(dtype="int4", axis=1), "grouped along the input dimension"),
])
def test_bad_options_raise_config_error(kwargs, message):
    with pytest.raises(mq.ConfigError, match=message) as info:
        mq.quantize_weight(torch.randn(8, 64), **kwargs)
    assert isinstance(info.value, mq.MonoQuantError) and isinstance(info.value, ValueError)
