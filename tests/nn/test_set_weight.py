"""layer.set_weight(mq.quantize_weight(...)): the remedy the read-only .weight view names.  An int8
layer's kernels went on reading the old packed codes with the new scales (outputs of neither
weight); now the layer gives what a layer quantized from the new weight gives."""
import pytest
import torch
from torch import nn

import mono_quant as mq

CASES = [
    (lambda: nn.Linear(64, 48), (5, 64)),
    (lambda: nn.Conv2d(8, 16, 3, padding=1), (2, 8, 9, 9)),  # a small conv: the direct route
    (lambda: nn.Conv2d(64, 128, 3, padding=1), (2, 64, 16, 16)),  # the packed kernels
    (lambda: nn.Conv2d(8, 16, 3, groups=2), (1, 8, 7, 7)),
    (lambda: nn.Conv1d(8, 16, 3), (2, 8, 20)),
]


def _new_weight(layer, new, dtype):
    if dtype in ("fp16", "bf16"):
        return new.to(torch.float16 if dtype == "fp16" else torch.bfloat16)
    return mq.quantize_weight(new, dtype, symmetric=layer.weight_symmetric,
                              group_size=layer.weight_group_size if dtype == "int4" else None)


@pytest.mark.parametrize("dtype,activations", [("int8", "dynamic"), ("int8", None), ("int4", None), ("fp16", None)])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_a_new_weight_gives_what_a_layer_quantized_from_it_gives(case, dtype, activations):
    make, shape = CASES[case]
    torch.manual_seed(case)
    old, new, x = make(), make(), torch.randn(*shape)
    new.bias = old.bias
    quantized, _ = mq.quantize(nn.Sequential(old), dtype, activations=activations, include=["0"])
    want, _ = mq.quantize(nn.Sequential(new), dtype, activations=activations, include=["0"])
    layer = quantized[0]
    with torch.no_grad():
        quantized(x)  # the old weight's routes and derived copies are kept by now
        layer.set_weight(_new_weight(layer, new.weight, dtype))
        assert torch.equal(layer.weight, want[0].weight)
        assert torch.equal(quantized(x), want(x))
    assert sorted(layer._buffers) == sorted(want[0]._buffers)  # no stale packed copy beside the new one


def test_a_weight_of_another_format_or_shape_is_refused_and_changes_nothing():
    torch.manual_seed(0)
    quantized, _ = mq.quantize(nn.Sequential(nn.Linear(16, 8)), "int8")
    layer, x = quantized[0], torch.randn(2, 16)
    before = quantized(x)
    with pytest.raises(ValueError, match=r"stores int8, the weight is int4.*dtype='int8'"):
        layer.set_weight(mq.quantize_weight(torch.randn(8, 16), "int4"))
    with pytest.raises(ValueError, match=r"shape \(16, 8\), the layer stores \(8, 16\)"):
        layer.set_weight(mq.quantize_weight(torch.randn(16, 8), "int8"))
    with pytest.raises(TypeError, match="quantize_weight returns"):
        layer.set_weight([[1, 2]])
    assert torch.equal(quantized(x), before)
