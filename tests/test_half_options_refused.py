"""fp16 / bf16 are casts of each weight: the integer formats' options (symmetric, dynamic
activations) were accepted with them and ignored without a word; now a ConfigError says so."""
import pytest
import torch.nn as nn

import mono_quant as mq
from mono_quant.errors import ConfigError


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("options", [{"symmetric": True}, {"symmetric": False}, {"activations": "dynamic"}])
def test_integer_options_with_a_half_dtype_are_refused(dtype, options):
    with pytest.raises(ConfigError, match="drop"):
        mq.quantize(nn.Sequential(nn.Linear(64, 32)), dtype=dtype, **options)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_dtype_without_them_and_with_activations_none_runs(dtype):
    result = mq.quantize(nn.Sequential(nn.Linear(64, 32)), dtype=dtype, activations=None)
    assert not result.skipped


def test_int8_still_takes_them():
    mq.quantize(nn.Sequential(nn.Linear(64, 32)), dtype="int8", symmetric=False, activations="dynamic")
