"""quantize() on modules and state_dicts: what is replaced, what is skipped and
why, and that the caller's model is never touched."""
import copy

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.demo import TransformerLike, demo_models, output_sqnr_db


def _snapshot(model: nn.Module):
    """Everything about a model that quantize() must leave alone."""
    return {
        "tensors": {k: (v, v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()},
        "params": {k: (p, p.requires_grad) for k, p in model.named_parameters()},
        "modules": {k: (m, m.training, dict(m._forward_hooks), dict(m._forward_pre_hooks))
                    for k, m in model.named_modules()},
        "children": {k: dict(m._modules) for k, m in model.named_modules()},
    }


def _assert_unchanged(model: nn.Module, snap) -> None:
    now = model.state_dict(keep_vars=True)
    assert now.keys() == snap["tensors"].keys()
    for k, (obj, value) in snap["tensors"].items():
        assert now[k] is obj, k  # same tensor objects
        assert torch.equal(now[k].detach(), value), k  # same values
    for k, p in model.named_parameters():
        assert snap["params"][k][0] is p and p.requires_grad == snap["params"][k][1]
    for k, m in model.named_modules():
        obj, training, hooks, pre_hooks = snap["modules"][k]
        assert m is obj and m.training == training
        assert dict(m._forward_hooks) == hooks and dict(m._forward_pre_hooks) == pre_hooks
        assert dict(m._modules) == snap["children"][k]


class Custom(nn.Module):
    """A custom container with a ModuleDict, a ModuleList and a nested Sequential."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        # (16 outputs: narrower int8 layers stay float, narrow.py)
        self.heads = nn.ModuleDict({"a": nn.Linear(8, 16), "b": nn.Sequential(nn.ReLU(), nn.Linear(8, 16))})
        self.extra = nn.ModuleList([nn.Linear(16, 16), nn.LayerNorm(16)])

    def forward(self, x):
        h = self.stem(x).mean(dim=(2, 3))
        return self.extra[1](self.extra[0](self.heads["a"](h) + self.heads["b"](h)))


@pytest.mark.parametrize("dtype", ["int8", "fp16", "bf16"])
def test_caller_model_is_never_modified(dtype):
    model = Custom()
    model.heads["a"].register_forward_hook(lambda m, i, o: None)
    model.extra[0].weight.requires_grad_(False)
    model.train()
    snap = _snapshot(model)
    qmodel, skipped = mq.quantize(model, dtype=dtype)
    _assert_unchanged(model, snap)
    assert qmodel is not model and skipped == []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            assert isinstance(qmodel.get_submodule(name), mq.QuantizedModule)
    assert qmodel.training  # flags carried over to the copy


def test_finds_layers_at_any_depth_and_root():
    qmodel, skipped = mq.quantize(Custom())
    kinds = {n: type(m).__name__ for n, m in qmodel.named_modules()}
    assert kinds["stem"] == "QuantizedConv2d"
    assert kinds["heads.a"] == kinds["heads.b.1"] == kinds["extra.0"] == "QuantizedLinear"
    assert kinds["extra.1"] == "LayerNorm"
    root = nn.Linear(10, 16)
    qroot, _ = mq.quantize(root)
    assert isinstance(qroot, mq.QuantizedLinear) and isinstance(root, nn.Linear)
    x = torch.randn(2, 10)
    assert output_sqnr_db(root(x), qroot(x)) > 30


def test_shared_module_quantized_once_and_stays_shared():
    shared = nn.Linear(16, 16)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    result = mq.quantize(model)
    assert result.model[0] is result.model[2]
    assert len(result.report.layers) == 1


def test_tied_weights_share_quantized_storage():
    a, b = nn.Linear(16, 16), nn.Linear(16, 16)
    b.weight = a.weight
    result = mq.quantize(nn.Sequential(a, b))
    qa, qb = result.model
    assert qa.weight_packed is qb.weight_packed and qa.weight_scale is qb.weight_scale
    assert not torch.equal(qa.bias, qb.bias) or a.bias is b.bias


def test_quantized_model_outputs_close_to_fp32():
    for name, model, x in demo_models():
        with torch.no_grad():
            ref = model(x)
            for dtype, floor in [("int8", 30), ("fp16", 50), ("bf16", 40)]:
                y = mq.quantize(model, dtype=dtype).model(x)
                assert y.dtype == x.dtype
                assert output_sqnr_db(ref, y) >= floor, (name, dtype)


@pytest.mark.parametrize("dtype,storage", [("fp16", torch.float16), ("bf16", torch.bfloat16),
                                           (torch.float16, torch.float16)])
def test_float_formats_store_dtype_and_return_input_dtype(dtype, storage):
    model = nn.Sequential(nn.Linear(16, 16), nn.Conv2d(1, 1, 1))
    qmodel, _ = mq.quantize(model, dtype=dtype)
    assert qmodel[0].state_dict()["weight"].dtype == storage and qmodel[1].state_dict()["weight"].dtype == storage
    assert qmodel[0].weight.dtype == torch.float32  # .weight: the float weight it replaced (torch_compat)
    x = torch.randn(3, 16)
    assert qmodel[0](x).dtype == torch.float32
    assert qmodel[0](x.to(storage)).dtype == storage


def test_int8_module_buffers_state_dict_to_and_deepcopy():
    qmodel, _ = mq.quantize(nn.Sequential(nn.Linear(8, 4)), include=["0"])  # named exactly: narrow, yet quantized
    sd = qmodel.state_dict()
    # a Linear keeps only the kernels' packed int8 copy (16-channel panels: 16 x 8 bytes), not a second plain one
    assert "0.weight_qdata" not in sd and sd["0.weight_packed"].dtype == torch.int8
    assert sd["0.weight_packed"].numel() == 16 * 8 and qmodel[0].quantized_weight().qdata.shape == (4, 8)
    assert sd["0.weight_scale"].dtype == torch.float32 and sd["0.weight_zero_point"].dtype == torch.int32
    clone = copy.deepcopy(qmodel)
    x = torch.randn(2, 8)
    assert torch.equal(clone(x), qmodel(x))
    assert qmodel.to(torch.device("cpu"))(x).shape == (2, 4)
    assert qmodel(torch.randn(2, 3, 8)).shape == (2, 3, 4)  # any leading shape


def test_include_exclude_globs_and_types():
    model = Custom()
    _, skipped = mq.quantize(model, exclude=["heads.*"])
    assert {s.name for s in skipped} == {"heads.a", "heads.b.1"}
    assert all("excluded" in s.reason for s in skipped)
    _, skipped = mq.quantize(model, include=[nn.Conv2d])
    assert {s.name for s in skipped} == {"heads.a", "heads.b.1", "extra.0"}
    assert all(s.reason == "not matched by include" for s in skipped)
    result = mq.quantize(model, include="heads.*", exclude=nn.Linear)
    assert len(result.report.layers) == 0
    with pytest.raises(TypeError, match="globs"):
        mq.quantize(model, include=[3])


def test_unsupported_and_subclass_layers_are_listed_with_reasons():
    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(nn.Embedding(10, 4), nn.Conv3d(4, 4, 3), MyLinear(4, 4),
                          nn.LayerNorm(4), nn.Linear(4, 16))
    result = mq.quantize(model)
    reasons = {s.name: s.reason for s in result.skipped}
    assert set(reasons) == {"0", "1", "2"}
    assert "embeddings=True" in reasons["0"] and "unsupported type" in reasons["1"]
    assert "subclass MyLinear" in reasons["2"]
    assert [r.name for r in result.report.layers] == ["4"]


def test_multihead_attention_still_runs():
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    model = nn.Sequential(nn.Linear(16, 16))
    model.attn = mha
    qmodel, skipped = mq.quantize(model)
    assert not skipped and type(qmodel.attn).__name__ == "QuantizedMultiheadAttention"
    x = torch.randn(2, 5, 16)
    out, _ = qmodel.attn(x, x, x)
    assert out.shape == (2, 5, 16)


def test_small_layers_and_lazy_and_meta_are_skipped():
    model = nn.Sequential(nn.Linear(2, 2), nn.LazyLinear(4), nn.Linear(64, 64))
    _, skipped = mq.quantize(model, min_weight_numel=16)
    reasons = {s.name: s.reason for s in skipped}
    assert reasons["0"].startswith("too small") and "lazy" in reasons["1"]
    meta = nn.Linear(4, 4, device="meta")
    _, skipped = mq.quantize(nn.Sequential(meta))
    assert "meta" in skipped[0].reason


def test_nonfinite_weights_error_names_layer_or_skip():
    model = nn.Sequential(nn.Linear(4, 16), nn.Sequential(nn.Linear(16, 16)))
    with torch.no_grad():
        model[1][0].weight[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"'1\.0'.*channel 2"):
        mq.quantize(model)
    qmodel, skipped = mq.quantize(model, nonfinite="skip")
    assert skipped[0].name == "1.0" and "non-finite" in skipped[0].reason
    assert isinstance(qmodel[1][0], nn.Linear)
    with pytest.raises(ValueError, match="NaN or Inf"):
        mq.quantize(model, dtype="fp16")


@pytest.mark.parametrize("bad,exc,match", [
    ({"dtype": "int2"}, ValueError, "expected one of"),
    ({"dtype": torch.float64}, ValueError, "expected one of"),
    ({"granularity": "per_row"}, ValueError, "granularity"),
    ({"nonfinite": "ignore"}, ValueError, "nonfinite"),
    ({"min_weight_numel": -1}, ValueError, "min_weight_numel"),
])
def test_bad_options(bad, exc, match):
    with pytest.raises(exc, match=match):
        mq.quantize(nn.Linear(2, 2), **bad)


@pytest.mark.parametrize("thing", [42, "model.pt", [nn.Linear(2, 2)], {"w": [1.0]}, {1: torch.ones(1)}])
def test_bad_input_type(thing):
    with pytest.raises(TypeError):
        mq.quantize(thing)


def test_per_tensor_granularity():
    result = mq.quantize(nn.Linear(32, 16), granularity="per_tensor")
    assert result.model.weight_scale.shape == (1,) and result.model.weight_axis is None


def test_report_counts_real_bytes_and_sqnr():
    model = TransformerLike(dim=64, hidden=128, depth=2, out=8)
    result = mq.quantize(model)
    layer = next(r for r in result.report.layers if r.name == "blocks.0.up")
    assert layer.bytes_before == 128 * 64 * 4 + 128 * 4
    # packed int8 + column sums + packing info + scale + zp + bias
    assert layer.bytes_after == 128 * 64 + 128 * 4 + 5 * 4 + 128 * 4 + 128 * 4 + 128 * 4
    assert 35 < layer.weight_sqnr_db < 60
    assert result.report.model_bytes_after < result.report.model_bytes_before / 3
    assert "blocks.0.up" in str(result.report)
    assert result.config.dtype == "int8"
    assert set(result.state_dict()) == set(result.model.state_dict())


def test_state_dict_input_and_model_argument():
    model = TransformerLike(dim=32, hidden=64, depth=1, out=8).eval()
    sd = model.state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    qsd, skipped = mq.quantize(sd, exclude=["head.*"])
    assert [s.name for s in skipped] == ["head.1"]
    assert qsd["proj.weight_packed"].dtype == torch.int8 and "proj.weight" not in qsd
    assert "proj.weight_qdata" not in qsd  # one copy of the weight: the packed one
    assert qsd["head.1.weight"].dtype == torch.float32 and qsd["blocks.0.norm.weight"].shape == (32,)
    assert all(torch.equal(sd[k], before[k]) for k in sd)
    assert qsd["blocks.0.norm.weight"].data_ptr() != sd["blocks.0.norm.weight"].data_ptr()
    # with model=: a quantized model equal to quantizing the model itself
    skeleton = TransformerLike(dim=32, hidden=64, depth=1, out=8).to("meta")
    qmodel, _ = mq.quantize(sd, model=skeleton, exclude=["head.*"])
    direct, _ = mq.quantize(model, exclude=["head.*"])
    x = torch.randn(3, 32)
    assert torch.equal(qmodel(x), direct(x))
    wrong = {k: v for k, v in sd.items() if k != "blocks.0.norm.bias"}
    with pytest.raises(KeyError, match="blocks.0.norm.bias"):
        mq.quantize(wrong, model=TransformerLike(dim=32, hidden=64, depth=1, out=8))
    reshaped = dict(sd, **{"head.1.weight": torch.zeros(8, 33)})  # a float layer's entry of another shape
    with pytest.raises(ValueError, match=r"'head.1.weight' has shape \(8, 33\), the model's expects \(8, 32\)"):
        mq.quantize(reshaped, model=TransformerLike(dim=32, hidden=64, depth=1, out=8), exclude=["head.*"])


def test_state_dict_keys_with_an_empty_name_part_stay_float(tmp_path):
    # '.weight' would be layer '' as 'weight' is: two layers of one name, a file load() refuses
    sd = {"weight": torch.randn(64, 64), ".weight": torch.randn(64, 64), "a..weight": torch.randn(64, 64)}
    result = mq.quantize(sd)
    assert [layer.name for layer in result.report.layers] == [""]
    assert sorted(s.reason.split(" has")[0] for s in result.skipped) == ["'.weight'", "'a..weight'"]
    loaded = mq.load(mq.save(result, tmp_path / "odd.safetensors"))
    assert torch.equal(loaded[".weight"], sd[".weight"]) and torch.equal(loaded["a..weight"], sd["a..weight"])


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
@pytest.mark.parametrize("weights", [torch.bfloat16, torch.float16])
def test_a_state_dict_of_another_dtype_than_its_skeleton(dtype, weights):
    # an LLM's case: a meta skeleton built in the default float32, a bfloat16 checkpoint; every
    # layer takes the checkpoint's dtype, as quantizing the model loaded from it does
    model = Custom().eval().to(weights)
    with torch.device("meta"):
        skeleton = Custom()
    result = mq.quantize(model.state_dict(), dtype, model=skeleton, include=["stem", "heads.*", "extra.0"])
    direct = mq.quantize(model, dtype, include=["stem", "heads.*", "extra.0"])
    assert [layer.name for layer in result.report.layers] == [layer.name for layer in direct.report.layers]
    for name, qm in result.model.named_modules():
        if isinstance(qm, mq.QuantizedModule):
            assert qm.orig_dtype == weights and qm.weight.dtype == weights, name
    x = torch.randn(2, 3, 6, 6, dtype=weights)
    assert torch.equal(result.model(x), direct.model(x))


def test_result_unpacks_and_indexes():
    result = mq.quantize(nn.Linear(4, 16))
    model, skipped = result
    assert result[0] is model and result[1] is skipped and len(result) == 2
    assert "QuantizedLinear" in repr(result)
