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
