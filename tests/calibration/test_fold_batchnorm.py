"""BatchNorm folding: the folded layer equals layer -> BN in eval mode; inputs untouched."""
import copy

import pytest
import torch
from torch import nn

from mono_quant.fold_batchnorm import fold_batchnorm, fold_conv_bn, fold_linear_bn


# tiny models: one thread avoids OpenMP start-up and spinning on a busy host
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomized_bn(bn, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 3 + 0.01)
        if bn.weight is not None:
            bn.weight.copy_(torch.randn(bn.num_features, generator=g))
            bn.bias.copy_(torch.randn(bn.num_features, generator=g))
    return bn.eval()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups,stride", [(1, 1), (4, 2), (8, 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_conv_bn_fold_matches_eval(bias, groups, stride, affine):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, stride, 1, groups=groups, bias=bias).eval()
    bn = randomized_bn(nn.BatchNorm2d(8, affine=affine))
    before = copy.deepcopy((conv.state_dict(), bn.state_dict()))
    folded = fold_conv_bn(conv, bn)
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    for got, want in zip((conv.state_dict(), bn.state_dict()), before):
        for k in want:
            assert torch.equal(got[k], want[k])
    assert folded is not conv and folded.bias is not None


def test_linear_bn_fold_matches_eval():
    torch.manual_seed(1)
    lin = nn.Linear(16, 5).eval()
    bn = randomized_bn(nn.BatchNorm1d(5), seed=2)
    folded = fold_batchnorm(lin, bn)
    x = torch.randn(7, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(lin(x)), rtol=1e-5, atol=1e-5)


def test_fold_refuses_what_it_cannot_fold():
    conv = nn.Conv2d(3, 4, 1)
    with pytest.raises(ValueError, match="4 output channels"):
        fold_conv_bn(conv, nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="running statistics"):
        fold_conv_bn(conv, nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(TypeError, match="not transposed"):
        fold_conv_bn(nn.ConvTranspose2d(3, 4, 1), nn.BatchNorm2d(4))
    with pytest.raises(TypeError, match="nn.Linear"):
        fold_linear_bn(conv, nn.BatchNorm1d(4))
    with pytest.raises(TypeError, match="BatchNorm"):
        fold_conv_bn(conv, nn.LayerNorm(4))


def _norm_or_prune(kind, conv):
    import warnings
    from torch.nn.utils import parametrizations, prune
    if kind == "parametrized weight_norm":
        return parametrizations.weight_norm(conv)
    if kind == "hook weight_norm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.nn.utils.weight_norm(conv)
    prune.l1_unstructured(conv, "weight", 0.3)
    return conv


@pytest.mark.parametrize("kind", ["parametrized weight_norm", "hook weight_norm", "pruned"])
def test_a_conv_whose_weight_is_computed_folds_into_a_plain_conv(kind):
    """(a parametrized conv raised KeyError "attribute 'weight' already exists", a hooked one deepcopy's
    "graph leaves" error; static int8 of a pruned conv + BatchNorm failed the same way)"""
    import mono_quant as mq
    from mono_quant.fold_batchnorm import fold_conv_bn
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    conv = _norm_or_prune(kind, nn.Conv2d(3, 8, 3)).eval()
    x = torch.randn(2, 3, 7, 7)
    folded = fold_conv_bn(conv, bn)
    assert type(folded) is nn.Conv2d and not hasattr(folded, "weight_orig")
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    model = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 4)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = mq.quantize(model, "int8", activations="static", calibration=torch.randn(64, 3, 7, 7)).model
    with torch.no_grad():
        assert (q(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
