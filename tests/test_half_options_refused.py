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


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_weight_only_spelling_is_accepted(dtype):
    assert not mq.quantize(nn.Sequential(nn.Linear(64, 32)), dtype=dtype, activations="weight_only").skipped


def test_a_hugging_face_config_saved_with_the_ignored_options_still_loads():
    pytest.importorskip("transformers")
    from mono_quant.integrations.transformers import MonoQuantConfig

    saved = {"quant_method": "mono_quant", "dtype": "fp16", "activations": "dynamic", "symmetric": True,
             "layers": [{"name": "x"}]}
    MonoQuantConfig.from_dict(saved)  # saved before fp16 refused them: a checkpoint must still load
    with pytest.raises(ConfigError):  # quantizing with them is refused
        MonoQuantConfig(dtype="fp16", activations="dynamic")
