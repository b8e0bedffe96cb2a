"""granularity="per_tensor" is an int8 / uint8 option: given with int4, fp16 or bf16 it was
ignored without a word (the int4 result was the grouped one, bit for bit); now a ConfigError,
as group_size given with a dtype that has no groups."""
import pytest
import torch
from torch import nn

import mono_quant as mq


@pytest.mark.parametrize("dtype,says", [("int4", "one scale per group"), ("fp16", "a cast"), ("bf16", "a cast")])
def test_per_tensor_with_a_dtype_that_has_none_is_an_error(dtype, says):
    with pytest.raises(mq.ConfigError, match=f"granularity='per_tensor' applies to dtypes 'int8' and 'uint8' only; "
                                             f"{dtype} .*{says}"):
        mq.quantize(nn.Linear(64, 32), dtype, granularity="per_tensor")
    with pytest.raises(mq.ConfigError, match="per_tensor"):
        mq.quantize({"fc.weight": torch.randn(32, 64)}, dtype, granularity="per_tensor")


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_per_tensor_int8_still_has_one_scale(dtype):
    qmodel, _ = mq.quantize(nn.Linear(64, 32), dtype, granularity="per_tensor")
    assert qmodel.quantized_weight().scale.numel() == 1


@pytest.mark.parametrize("dtype", ["int4", "fp16", "bf16"])
def test_per_channel_is_accepted_everywhere(dtype):
    mq.quantize(nn.Linear(64, 32), dtype, granularity="per_channel")


@pytest.mark.parametrize("dtype,says", [("fp16", "fp16 is a cast"), ("int8", "int8 is quantized per channel")])
def test_group_size_error_says_how_the_dtype_is_stored(dtype, says):
    with pytest.raises(mq.ConfigError, match=f"group_size applies to dtype 'int4' only; {says}"):
        mq.quantize(nn.Linear(64, 32), dtype, group_size=64)
