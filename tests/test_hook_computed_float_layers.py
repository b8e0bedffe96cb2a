"""A layer left float whose weight a hook computes (torch.nn.utils.prune, the hook-based
weight_norm / spectral_norm) is copied as it works: quantize() used to fail on it with
"Only Tensors created explicitly by the user (graph leaves) support the deepcopy protocol"
(the attribute weight_orig * weight_mask has a grad_fn, which deepcopy refuses), whenever one
pruned layer stayed float (too narrow, excluded, an unsupported type).  The copy holds the
weight recomputed, detached; its hook recomputes it at each call as the original's does, and
the caller's model is left as it was."""
import warnings

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

import mono_quant as mq


def _snapshot(model):
    return ({k: (id(v), v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()},
            [(n, id(m), dict(m._forward_pre_hooks)) for n, m in model.named_modules()],
            {n: id(m.__dict__.get("weight")) for n, m in model.named_modules()})


def _same(a, b):
    sd_a, rest_a = a[0], a[1:]
    sd_b, rest_b = b[0], b[1:]
    assert sd_a.keys() == sd_b.keys() and rest_a == rest_b
    assert all(sd_a[k][0] == sd_b[k][0] and torch.equal(sd_a[k][1], sd_b[k][1]) for k in sd_a)


def _pruned_with_a_narrow_head():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)).eval()  # 2 outputs: stays float
    prune.global_unstructured([(model[0], "weight"), (model[2], "weight")], prune.L1Unstructured, amount=0.3)
    return model


def test_a_pruned_layer_left_float_is_copied_with_its_pruning():
    model = _pruned_with_a_narrow_head()
    assert model[2].weight.grad_fn is not None  # what deepcopy refused
    x = torch.randn(5, 64)
    expected = model[2](x).detach()  # (before the snapshot: the caller's forward recomputes its weight)
    before = _snapshot(model)
    qmodel, skipped = mq.quantize(model)
    _same(before, _snapshot(model))
    assert [s.name for s in skipped] == ["2"] and type(qmodel[0]) is mq.QuantizedLinear
    head = qmodel[2]
    assert head is not model[2] and head.weight_orig is not model[2].weight_orig
    assert torch.equal(head.weight, model[2].weight_orig * model[2].weight_mask)
    with torch.no_grad():
        assert torch.equal(head(x), expected)
        head.weight_orig.mul_(2.0)  # the copy's hook recomputes from its own tensors
        assert torch.allclose(head(x) - head.bias, 2.0 * (expected - model[2].bias))
    assert torch.equal(head.weight, head.weight_orig * head.weight_mask)
    _same(before, _snapshot(model))
    head(x).sum().backward()  # the copy trains as the original does: through its own weight_orig
    assert head.weight_orig.grad is not None and model[2].weight_orig.grad is None


@pytest.mark.parametrize("case", ["excluded", "conv3d", "layernorm", "embedding", "weight_norm", "spectral_norm"])
def test_other_float_layers_with_hook_computed_weights(case):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Conv3d(2, 4, 3) if case in ("conv3d", "weight_norm", "spectral_norm")
                          else nn.LayerNorm(8) if case == "layernorm" else nn.Embedding(10, 8)
                          if case == "embedding" else nn.Linear(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the hook-based norms
        if case == "weight_norm":
            nn.utils.weight_norm(model[1])
        elif case == "spectral_norm":
            nn.utils.spectral_norm(model[1])
        else:
            prune.l1_unstructured(model[1], "weight", amount=0.3)
    before = _snapshot(model)
    result = mq.quantize(model, exclude=["1"] if case == "excluded" else None, min_weight_numel=0)
    _same(before, _snapshot(model))
    assert [layer.name for layer in result.report.layers] == ["0"]
    copy = result.model[1]
    assert type(copy) is type(model[1]) and len(copy._forward_pre_hooks) == 1
    x = torch.randint(0, 10, (3,)) if case == "embedding" else torch.randn(1, 2, 5, 5, 5) \
        if isinstance(model[1], nn.Conv3d) else torch.randn(3, 8)
    model.eval(), result.model.eval()
    with torch.no_grad():
        assert torch.equal(copy(x), model[1](x))


def test_a_pruned_quantized_layer_still_works():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    prune.l1_unstructured(model[1], "weight", amount=0.5)
    qmodel, skipped = mq.quantize(model)
    assert not skipped and type(qmodel[1]) is mq.QuantizedLinear
