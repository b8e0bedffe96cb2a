"""A layer whose weight disagrees with its own attributes (a weight replaced by hand, e.g.
pruned heads) or that has no weight stays float, listed with a reason: the quantized layers
are built from those attributes, and used to compute, save and reload with the wrong shape."""
import pytest
import torch
from torch import nn

import mono_quant as mq


def _replace(layer, weight, bias="keep"):
    layer.weight = nn.Parameter(weight)
    if bias != "keep":
        layer.bias = None if bias is None else nn.Parameter(bias)
    return layer


CASES = {
    "linear": lambda: _replace(nn.Linear(64, 64), torch.randn(32, 64), torch.randn(32)),
    "linear_bias": lambda: _replace(nn.Linear(64, 64), torch.randn(64, 64), torch.randn(32)),
    "conv": lambda: _replace(nn.Conv2d(8, 16, 3), torch.randn(16, 8, 1, 1)),
    "embedding": lambda: _replace(nn.Embedding(100, 32), torch.randn(50, 32)),
}


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_weight_of_another_shape_than_the_attributes_is_skipped(case, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(CASES[case](), nn.Identity())
    qmodel, skipped = mq.quantize(model, dtype=dtype, embeddings=case == "embedding")
    assert [s.name for s in skipped] == ["0"]
    assert "differs from" in skipped[0].reason
    assert type(qmodel[0]) is type(model[0])


def test_a_matching_layer_beside_it_is_still_quantized():
    torch.manual_seed(0)
    model = nn.Sequential(_replace(nn.Linear(64, 64), torch.randn(32, 64), torch.randn(32)), nn.Linear(32, 32))
    qmodel, skipped = mq.quantize(model)
    assert [s.name for s in skipped] == ["0"] and type(qmodel[1]).__name__ == "QuantizedLinear"
    x = torch.randn(3, 64)
    assert qmodel(x).shape == model(x).shape == (3, 32)


def test_layer_without_weight_is_skipped_with_a_reason():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    model[0].weight = None
    qmodel, skipped = mq.quantize(model)
    assert [(s.name, s.reason) for s in skipped] == [("0", "layer has no weight (weight is None)")]
    assert type(qmodel[1]).__name__ == "QuantizedLinear"


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_layers_sharing_a_bias_share_its_copy(dtype):
    """Two layers holding one bias Parameter: the quantized layers hold one copy (it became two, so a
    bias trained or edited after quantization changed in one layer only); the caller's stays apart."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    model[2].bias = model[0].bias
    q = mq.quantize(model, dtype=dtype).model
    assert q[0].bias is q[2].bias and q[0].bias is not model[0].bias
    assert len(list(q.parameters())) == 1
    with torch.no_grad():
        q[0].bias.add_(1.0)
    assert torch.equal(q[2].bias, model[0].bias + 1.0)


class _Transposed(nn.Module):  # the weight stored [in, out]: a shape-changing parametrization
    def forward(self, stored):
        return stored.t()

    def right_inverse(self, weight):
        return weight.t()


class _LowRank(nn.Module):  # two originals, neither of the weight's shape
    def forward(self, a, b):
        return a @ b

    def right_inverse(self, weight):
        return weight[:, :8].clone(), torch.eye(8, weight.shape[1])


class _FirstRows(nn.Module):  # a computed weight that really disagrees with the layer's attributes
    def forward(self, stored):
        return stored[:32]


@pytest.mark.parametrize("parametrization", [_Transposed, _LowRank])
def test_a_parametrized_weight_is_checked_as_computed(parametrization, tmp_path):
    """The declared-shape check looked at the parametrization's largest original (stored [64, 48],
    or a [8, 64] factor) and skipped the layer with a false reason; the layer computes with the
    weight the parametrization gives, which is what is checked and quantized."""
    from torch.nn.utils import parametrize

    def build():
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16)).eval()
        parametrize.register_parametrization(model[0], "weight", parametrization(), unsafe=True)
        return model

    model = build()
    result = mq.quantize(model)
    assert not result.skipped and [layer.name for layer in result.report.layers] == ["0", "2"]
    assert result.report.layers[0].shape == (48, 64)
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.allclose(result.model(x), model(x), atol=0.05)
        path = mq.save(result, tmp_path / "m.safetensors")
        assert torch.equal(mq.load(path, model=build())(x), result.model(x))


def test_a_parametrized_weight_of_another_shape_is_skipped_with_its_computed_shape():
    from torch.nn.utils import parametrize
    model = nn.Sequential(nn.Linear(64, 48), nn.Linear(32, 16))
    parametrize.register_parametrization(model[0], "weight", _FirstRows(), unsafe=True)
    qmodel, skipped = mq.quantize(model)
    assert [(s.name, s.reason.split(":")[0]) for s in skipped] == [
        ("0", "weight shape (32, 64) differs from the layer's attributes (out_features, in_features) = (48, 64)")]
    assert type(qmodel[1]) is mq.QuantizedLinear and parametrize.is_parametrized(qmodel[0], "weight")
