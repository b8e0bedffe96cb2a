"""A QuantizedConv1d's ``.weight`` has the float Conv1d's shape ``[out, in/groups, k]``: it showed
the height-1 ``[out, in, 1, k]`` it is stored as, so code using it as a Conv1d weight
(``F.conv1d(x, layer.weight)``, ``weight.shape[-1]``...) failed or read the wrong size."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int4", "fp16", "bf16"])
def test_weight_view_is_the_float_conv1d_weight(dtype):
    torch.manual_seed(0)
    conv = nn.Conv1d(8, 12, 5, padding=2, groups=2)
    qmodel, _ = mq.quantize(nn.Sequential(conv), dtype)
    q = qmodel[0]
    w = q.weight
    assert w.shape == conv.weight.shape and w.dim() == 3 and w.size(-1) == 5
    values = w * 1  # any op computes on the dequantized values, in the float layer's layout
    assert values.shape == conv.weight.shape
    assert torch.equal(values, q.dequantized_weight(torch.float32).reshape(conv.weight.shape))
    x = torch.randn(2, 8, 20)
    with torch.no_grad():
        y = F.conv1d(x, q.weight, q.bias, padding=2, groups=2)
        assert torch.allclose(y, F.conv1d(x, values, q.bias, padding=2, groups=2))
        assert torch.allclose(y, q(x), rtol=0.1, atol=0.1)
    assert q.weight_shape == (12, 4, 1, 5)  # the stored (height-1) geometry is unchanged


def test_state_dict_and_save_are_unchanged(tmp_path):
    conv = nn.Conv1d(4, 8, 3)
    qmodel, _ = mq.quantize(nn.Sequential(conv), "fp16")
    assert qmodel.state_dict()["0.weight"].shape == (8, 4, 1, 3)  # the stored buffer, as saved files hold it
    path = mq.save(qmodel, tmp_path / "m.safetensors")
    loaded = mq.load(path, model=nn.Sequential(nn.Conv1d(4, 8, 3)))
    assert loaded[0].weight.shape == conv.weight.shape
