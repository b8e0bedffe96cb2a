"""A replaced layer's hooks: the user's forward / backward hooks run on the quantized layer too,
and the hook-based torch.nn.utils.weight_norm / spectral_norm and torch.nn.utils.prune give the
weight (and bias) their forward uses (not the stale or unnormalized attribute they keep between
calls); hooks that read what the quantized layer lacks (pruning masks, torch.ao observers) stay
behind."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.demo import output_sqnr_db


def _no_future_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the hook-based weight_norm
        return fn(*args, **kwargs)


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_forward_hooks_run_on_the_quantized_layer(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.LSTM(32, 16))
    calls = []
    model[0].register_forward_pre_hook(lambda m, args: calls.append(("pre", type(m).__name__)))
    model[0].register_forward_hook(lambda m, args, out: calls.append(("post", type(m).__name__)))
    model[0].register_forward_hook(lambda m, args, kwargs, out: calls.append(("kwargs", type(m).__name__)),
                                   with_kwargs=True)
    model[2].register_forward_hook(lambda m, args, out: calls.append(("post", type(m).__name__)))
    hooks_before = [dict(m._forward_hooks) for m in model]
    qmodel, skipped = mq.quantize(model, dtype=dtype)
    assert not skipped
    qmodel(torch.randn(3, 64))
    assert calls == [("pre", "QuantizedLinear"), ("post", "QuantizedLinear"), ("kwargs", "QuantizedLinear"),
                     ("post", "QuantizedLSTM")]
    assert [dict(m._forward_hooks) for m in model] == hooks_before  # the caller's tables untouched
    assert qmodel[0]._forward_hooks is not model[0]._forward_hooks


def test_a_hook_that_changes_the_output_still_does():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16))
    model[0].register_forward_hook(lambda m, args, out: out * 0)
    qmodel, _ = mq.quantize(model)
    assert torch.equal(qmodel(torch.randn(2, 16)), torch.zeros(2, 16))


def test_full_backward_hook_is_carried():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16))
    seen = []
    model[0].register_full_backward_hook(lambda m, gin, gout: seen.append(type(m).__name__))
    qmodel, _ = mq.quantize(model)
    x = torch.randn(2, 16, requires_grad=True)
    qmodel(x).sum().backward()
    assert seen == ["QuantizedLinear"] and x.grad is not None


def test_stale_weight_norm_weight_is_recomputed():
    torch.manual_seed(0)
    model = nn.Sequential(_no_future_warnings(nn.utils.weight_norm, nn.Linear(32, 32)), nn.ReLU(),
                          _no_future_warnings(nn.utils.weight_norm, nn.Conv1d(4, 8, 3)))
    with torch.no_grad():  # what an optimizer step does: the .weight attribute is stale until a forward
        model[0].weight_g.mul_(3.0)
        model[2].weight_v.mul_(-1.0)
    g_before = model[0].weight_g.detach().clone()
    stale = model[0].weight.detach().clone()
    qmodel, skipped = mq.quantize(model)
    assert not skipped
    assert torch.equal(model[0].weight_g, g_before) and torch.equal(model[0].weight, stale)  # caller untouched
    assert not qmodel[0]._forward_pre_hooks  # the norm hook stays behind (nothing to recompute from)
    x, xc = torch.randn(4, 32), torch.randn(2, 4, 16)
    with torch.no_grad():
        assert output_sqnr_db(model[0](x), qmodel[0](x)) > 35
        assert output_sqnr_db(model[2](xc), qmodel[2](xc)) > 35


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_spectral_norm_weight_is_normalized_before_any_forward(mode):
    torch.manual_seed(0)
    model = nn.Sequential(_no_future_warnings(nn.utils.spectral_norm, nn.Linear(32, 32)))
    getattr(model, mode)()
    u_before = model[0].weight_u.clone()
    qmodel, _ = mq.quantize(model)
    assert torch.equal(model[0].weight_u, u_before)  # no power iteration on the caller's buffers
    model.eval()
    qmodel.eval()
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert output_sqnr_db(model(x), qmodel(x)) > 35  # it was about -2 dB: the unnormalized weight


def test_saved_and_loaded_weight_norm_model_matches(tmp_path):
    torch.manual_seed(0)

    def build():
        return nn.Sequential(_no_future_warnings(nn.utils.weight_norm, nn.Linear(32, 32)))

    model = build()
    with torch.no_grad():
        model[0].weight_g.mul_(2.0)
    result = mq.quantize(model)
    path = mq.save(result, tmp_path / "m.safetensors")
    x = torch.randn(3, 32)
    for skeleton in (nn.Sequential(nn.Linear(32, 32)), build()):
        assert torch.equal(mq.load(path, model=skeleton)(x), result.model(x))


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_pruned_layer_quantizes_its_masked_weight_and_bias(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Conv1d(4, 8, 3))
    nn.utils.prune.l1_unstructured(model[0], "weight", amount=0.5)
    nn.utils.prune.random_unstructured(model[0], "weight", amount=0.2)  # a PruningContainer
    nn.utils.prune.l1_unstructured(model[0], "bias", amount=0.5)
    nn.utils.prune.ln_structured(model[2], "weight", amount=0.5, n=2, dim=0)
    with torch.no_grad():  # an optimizer step: .weight / .bias are stale until the next forward
        model[0].weight_orig.mul_(-2.0)
        model[0].bias_orig.add_(1.0)
    stale = model[0].weight.detach().clone()
    qmodel, skipped = mq.quantize(model, dtype=dtype)
    assert not skipped
    assert torch.equal(model[0].weight, stale)  # the caller's attribute untouched
    assert not qmodel[0]._forward_pre_hooks and not qmodel[2]._forward_pre_hooks
    masked = model[0].weight_orig * model[0].weight_mask
    assert torch.equal(qmodel[0].bias, model[0].bias_orig * model[0].bias_mask)
    x, xc = torch.randn(4, 64), torch.randn(2, 4, 16)
    with torch.no_grad():
        assert output_sqnr_db(model[0](x), qmodel[0](x)) > 15
        assert output_sqnr_db(model[2](xc), qmodel[2](xc)) > 15
        if dtype != "int4":  # int4's asymmetric grid has no exact zero
            assert torch.equal(qmodel[0].dequantized_weight() == 0, masked == 0)


def test_torch_ao_observer_hooks_stay_behind():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch.ao.quantization as tq
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    calls = []
    model[0].register_forward_hook(lambda m, args, out: calls.append(type(m).__name__))
    model.qconfig = tq.default_qconfig
    tq.prepare(model, inplace=True)  # an observer child and its forward hook on each Linear
    qmodel, skipped = mq.quantize(model)
    assert not skipped
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert output_sqnr_db(model(x), qmodel(x)) > 30
    assert calls == ["Linear", "QuantizedLinear"]  # the user's own hook still runs
