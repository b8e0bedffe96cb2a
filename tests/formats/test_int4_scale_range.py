"""int4 group scales are fp16: a group too wide for them is an error naming the layer (or a skip
with nonfinite="skip"); its large weights used to come back clipped at 15 (7 symmetric) x 65504."""
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq


def _weight(big):
    torch.manual_seed(0)
    w = torch.randn(4, 64)
    w[2, 5] = big
    return w


@pytest.mark.parametrize("symmetric, big", [(False, 1.2e6), (True, 5e5), (False, -3e7)])
@pytest.mark.parametrize("method", ["rtn", "mse", "hqq"])
def test_too_wide_a_group_is_refused(symmetric, big, method):
    with pytest.raises(mq.NonFiniteWeightError, match="beyond int4's range") as info:
        mq.quantize_weight(_weight(big), "int4", group_size=32, symmetric=symmetric, method=method)
    assert info.value.row == 2


@pytest.mark.parametrize("symmetric, big", [(False, 9e5), (True, 4.5e5)])
def test_just_inside_the_range_still_quantizes_exactly_enough(symmetric, big):
    w = _weight(big)
    q = mq.quantize_weight(w, "int4", group_size=32, symmetric=symmetric, method="rtn")
    assert abs(float(q.dequantize()[2, 5]) - big) < 0.01 * big


def test_model_state_dict_and_checkpoint_name_the_layer(tmp_path):
    model = nn.Sequential(nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 4))
    with torch.no_grad():
        model[0].weight.copy_(_weight(1e7))
    with pytest.raises(mq.NonFiniteWeightError, match=r"layer '0' \(Linear\) has values beyond int4's range"):
        mq.quantize(model, dtype="int4", group_size=32)
    with pytest.raises(mq.NonFiniteWeightError, match=r"tensor '0.weight' has values beyond int4's range"):
        mq.quantize(model.state_dict(), dtype="int4", group_size=32)
    src = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.fspath(src))
    with pytest.raises(mq.NonFiniteWeightError, match=r"tensor '0.weight' has values beyond int4's range"):
        mq.quantize_checkpoint(src, tmp_path / "q.safetensors", "int4", group_size=32)
    qmodel, skipped = mq.quantize(model, dtype="int4", group_size=32, nonfinite="skip")
    assert [s.name for s in skipped] == ["0"] and "beyond int4's range" in skipped[0].reason
    assert type(qmodel[0]) is nn.Linear
