"""QuantizedMultiheadAttention of an nn.MultiheadAttention(add_bias_kv=True): its bias_k /
bias_v stay float parameters.  Outputs against the float module (quantization tolerance)
and against the float module of the dequantized projections (tight), with masks, both
layouts, need_weights both ways and add_zero_attn; the formats, kdim / vdim and unbatched
inputs; gradients; save / load bit-exact and a damaged bias refused at load."""
import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

import mono_quant as mq
from mono_quant.modules import QuantizedMultiheadAttention

# (dtype, activations, lowest output SQNR in dB against the float module), as tests/nn/test_rnn_attention.py
OPTIONS = [("int8", "dynamic", 25.0), ("int8", None, 30.0), ("int4", None, 14.0), ("fp16", None, 45.0),
           ("bf16", None, 30.0)]


def sqnr(ref, out):
    ref, out = ref.float(), out.float()
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean().clamp_min(1e-30)))


def quantized(module, dtype="int8", activations="dynamic"):
    extra = {"group_size": 32} if dtype == "int4" else {}
    return mq.quantize(module, dtype=dtype, activations=activations, min_weight_numel=0, **extra)


def flat(x):
    if x is None:
        return []
    return [x] if isinstance(x, torch.Tensor) else [t for part in x for t in flat(part)]


def same_structure(ref, out):
    return len(ref) == len(out) and all(
        (r is None and o is None) or (r is not None and o is not None and r.shape == o.shape and r.dtype == o.dtype)
        for r, o in zip(ref, out))


def bias_kv_mha(seed=0, **kw):
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(32, 4, add_bias_kv=True, **kw).eval()
    with torch.no_grad():  # torch's xavier init makes them small: make them matter
        mha.bias_k.normal_(0.0, 1.0)
        mha.bias_v.normal_(0.0, 1.0)
    return mha


def inputs(batch_first, self_attention, kdim=None, vdim=None):
    torch.manual_seed(5)
    b, tgt, src, e = 3, 5, 7, 32
    shape = (lambda n, d: (b, n, d)) if batch_first else (lambda n, d: (n, b, d))
    query = torch.randn(shape(tgt, e))
    if self_attention:
        return query, query, query
    key = torch.randn(shape(src, kdim or e))
    return query, key, (key if kdim is None and vdim is None else torch.randn(shape(src, vdim or e)))


def masks(self_attention):
    tgt, src = 5, (5 if self_attention else 7)
    padding = torch.zeros(3, src, dtype=torch.bool)
    padding[1, -2:] = True
    causal = torch.triu(torch.ones(tgt, src, dtype=torch.bool), diagonal=1)
    return [{}, {"key_padding_mask": padding}, {"attn_mask": causal},
            {"attn_mask": causal.float().masked_fill(causal, float("-inf")),
             "key_padding_mask": padding.float().masked_fill(padding, float("-inf"))},
            {"attn_mask": causal.repeat(3 * 4, 1, 1), "key_padding_mask": padding}]


def float_mha_of_dequantized(float_mha, q):
    """The float attention with the quantized module's dequantized projections and its
    bias_k / bias_v: what the quantized module computes, up to rounding."""
    ref = nn.MultiheadAttention(float_mha.embed_dim, float_mha.num_heads, kdim=float_mha.kdim, vdim=float_mha.vdim,
                                add_bias_kv=True, add_zero_attn=float_mha.add_zero_attn,
                                batch_first=float_mha.batch_first).eval()
    with torch.no_grad():
        if float_mha._qkv_same_embed_dim:
            ref.in_proj_weight.copy_(q.in_proj.dequantized_weight(torch.float32))
        else:
            for p in "qkv":
                getattr(ref, f"{p}_proj_weight").copy_(getattr(q, f"{p}_proj").dequantized_weight(torch.float32))
        ref.in_proj_bias.copy_(q.in_proj_bias)
        ref.out_proj.weight.copy_(q.out_proj.dequantized_weight(torch.float32))
        ref.out_proj.bias.copy_(q.out_proj.bias)
        ref.bias_k.copy_(q.bias_k)
        ref.bias_v.copy_(q.bias_v)
    return ref


@pytest.mark.parametrize("add_zero_attn", [False, True], ids=["plain", "zero_attn"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("need_weights", [True, False], ids=["weights", "no_weights"])
def test_matches_float_and_dequantized_reference(add_zero_attn, batch_first, need_weights):
    float_mha = bias_kv_mha(1, add_zero_attn=add_zero_attn, batch_first=batch_first)
    q, skipped = quantized(float_mha, "int8", None)
    assert isinstance(q, QuantizedMultiheadAttention) and not skipped and "add_bias_kv=True" in repr(q)
    assert torch.equal(q.bias_k, float_mha.bias_k) and q.bias_k.data_ptr() != float_mha.bias_k.data_ptr()
    reference = float_mha_of_dequantized(float_mha, q)
    for self_attention in (True, False):
        query, key, value = inputs(batch_first, self_attention)
        for mask in masks(self_attention):
            for average in (True, False):
                kw = dict(need_weights=need_weights, average_attn_weights=average, **mask)
                with torch.no_grad():
                    ref, exact, out = (float_mha(query, key, value, **kw), reference(query, key, value, **kw),
                                       q(query, key, value, **kw))
                assert same_structure(ref, out)
                assert sqnr(ref[0], out[0]) > 30
                for e, o in zip(flat(exact), flat(out)):
                    torch.testing.assert_close(o, e, rtol=1e-4, atol=1e-5)


def test_the_biases_matter():
    """The biased key / value change the output: a module ignoring them would fail here."""
    float_mha = bias_kv_mha(2)
    q, _ = quantized(float_mha, "int8", None)
    query, key, value = inputs(False, False)
    with torch.no_grad():
        before = q(query, key, value)[0]
        q.bias_v.add_(1.0)
        assert sqnr(before, q(query, key, value)[0]) < 20


@pytest.mark.parametrize("dtype,activations,min_sqnr", OPTIONS, ids=[f"{d}-{a}" for d, a, _ in OPTIONS])
def test_formats_kdim_causal_unbatched(dtype, activations, min_sqnr):
    float_mha = bias_kv_mha(3, kdim=20, vdim=24, bias=dtype != "bf16")
    q, _ = quantized(float_mha, dtype, activations)
    assert sorted(q.child_names()) == ["k_proj", "out_proj", "q_proj", "v_proj"] and q.bias_k is not None
    query, key, value = inputs(False, False, kdim=20, vdim=24)
    causal = torch.triu(torch.ones(5, 7, dtype=torch.bool), diagonal=1)
    calls = [(query, key, value, {}), (query, key, value, dict(attn_mask=causal, is_causal=True, need_weights=False)),
             (query[:, 0], key[:, 0], value[:, 0], {})]  # unbatched
    with torch.no_grad():
        for qu, k, v, kw in calls:
            ref, out = float_mha(qu, k, v, **kw), q(qu, k, v, **kw)
            assert same_structure(ref, out)
            assert sqnr(ref[0], out[0]) > min_sqnr


def test_weight_views_parameters_and_gradients():
    separate = bias_kv_mha(4, kdim=20, vdim=24)
    q, _ = quantized(separate, "int8", None)
    assert q.in_proj_weight is None and q.in_proj_bias.shape == separate.in_proj_bias.shape
    for p in "qkv":  # the float attribute names, dequantized
        assert torch.equal(getattr(q, f"{p}_proj_weight"), getattr(q, f"{p}_proj").dequantized_weight(torch.float32))
        assert getattr(q, f"{p}_proj_weight").shape == getattr(separate, f"{p}_proj_weight").shape
    float_mha = bias_kv_mha(4)
    q, _ = quantized(float_mha, "int4", None)
    assert q.in_proj_weight.shape == float_mha.in_proj_weight.shape and q.q_proj_weight is None
    assert q.out_proj.weight.shape == float_mha.out_proj.weight.shape and q.out_proj.weight.dtype == torch.float32
    frozen = {n: p.requires_grad for n, p in q.named_parameters()}
    assert frozen == {"bias_k": False, "bias_v": False, "in_proj.bias": False, "out_proj.bias": False}  # as biases
    query, key, value = inputs(False, False)
    q.bias_k.requires_grad_()  # opted in, as a bias
    q.bias_v.requires_grad_()
    query.requires_grad_()
    q.train()
    out, _ = q(query, key, value)
    out.pow(2).sum().backward()
    for p in (q.bias_k, q.bias_v, query):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_to_bfloat16_follows_the_float_module():
    float_mha = bias_kv_mha(5)
    q, _ = quantized(float_mha, "int8", "dynamic")
    q16, float16 = q.to(torch.bfloat16), float_mha.to(torch.bfloat16)
    assert q16.bias_k.dtype == torch.bfloat16
    query, key, value = (t.bfloat16() for t in inputs(False, False))
    with torch.no_grad():
        ref, out = float16(query, key, value), q16(query, key, value)
    assert same_structure(ref, out) and sqnr(ref[0], out[0]) > 20


# ---- save / load -------------------------------------------------------------------------------


def build(meta=False):
    with torch.device("meta" if meta else "cpu"):
        torch.manual_seed(6)
        model = nn.ModuleDict({"attn": nn.MultiheadAttention(32, 4, add_bias_kv=True, batch_first=True),
                               "cross": nn.MultiheadAttention(32, 4, kdim=16, vdim=16, add_bias_kv=True,
                                                              add_zero_attn=True)})
    if not meta:
        with torch.no_grad():
            for p in (model["attn"].bias_k, model["attn"].bias_v, model["cross"].bias_k, model["cross"].bias_v):
                p.normal_()
    return model.eval()


def run_both(model):
    torch.manual_seed(7)
    a, m = torch.randn(2, 5, 32), torch.randn(7, 2, 16)
    return flat(model["attn"](a, a, a)) + flat(model["cross"](a.transpose(0, 1), m, m, need_weights=False))


@pytest.mark.parametrize("dtype,activations", [("int8", "dynamic"), ("int4", None), ("fp16", None)])
@pytest.mark.parametrize("meta", [True, False], ids=["meta", "cpu"])
def test_save_load_bit_exact(tmp_path, dtype, activations, meta):
    q, skipped = quantized(build(), dtype, activations)
    assert not skipped
    path = tmp_path / "m.mq.safetensors"
    mq.save(q, path)
    with safetensors.safe_open(path, "pt") as f:
        assert {"attn.bias_k", "attn.bias_v", "cross.bias_k", "cross.bias_v"} <= set(f.keys())
    loaded = mq.load(path, model=build(meta))
    assert type(loaded["attn"]) is QuantizedMultiheadAttention and isinstance(loaded["cross"].bias_k, nn.Parameter)
    with torch.no_grad():
        for ref, out in zip(run_both(q), run_both(loaded)):
            assert torch.equal(ref, out)


def _rewrite(path, edit):
    """The file at ``path`` with its tensors passed through ``edit`` (same manifest)."""
    with safetensors.safe_open(path, "pt") as f:
        metadata = f.metadata()
    tensors = safetensors.torch.load_file(path)
    edit(tensors)
    safetensors.torch.save_file(tensors, path, metadata=metadata)


@pytest.mark.parametrize("damage,message", [
    (lambda t: t["attn.bias_k"].fill_(float("nan")), "NaN"),
    (lambda t: t.__setitem__("attn.bias_v", torch.zeros(1, 1, 31)), r"shape \[1, 1, 31\]"),
    (lambda t: t.__setitem__("attn.bias_v", torch.zeros(1, 1, 32, dtype=torch.int32)), "floating"),
    (lambda t: t.pop("cross.bias_k"), "missing"),
], ids=["nan", "shape", "dtype", "missing"])
def test_load_refuses_a_damaged_bias(tmp_path, damage, message):
    q, _ = quantized(build())
    path = tmp_path / "m.mq.safetensors"
    mq.save(q, path)
    _rewrite(path, damage)
    with pytest.raises(mq.CheckpointError, match=message):
        mq.load(path, model=build(meta=True))


def test_load_refuses_a_skeleton_that_disagrees_on_add_bias_kv(tmp_path):
    q, _ = quantized(build())
    path = tmp_path / "m.mq.safetensors"
    mq.save(q, path)
    plain = nn.ModuleDict({"attn": nn.MultiheadAttention(32, 4, batch_first=True),
                           "cross": nn.MultiheadAttention(32, 4, kdim=16, vdim=16, add_bias_kv=True)})
    with pytest.raises(mq.CheckpointError, match="unexpected keys.*attn.bias_k"):
        mq.load(path, model=plain)


def _shared_twice(meta=False):
    """One attention module under two names (``a`` and ``b``), as tied modules are."""
    with torch.device("meta" if meta else "cpu"):
        torch.manual_seed(8)
        attn = nn.MultiheadAttention(32, 4, add_bias_kv=True, batch_first=True)
        model = nn.ModuleDict({"a": attn, "b": attn})
    if not meta:
        with torch.no_grad():
            attn.bias_k.normal_()
    return model.eval()


def test_shared_module_loads_once_and_a_file_disagreeing_with_itself_is_refused(tmp_path):
    q, _ = quantized(_shared_twice())
    path = tmp_path / "m.mq.safetensors"
    mq.save(q, path)
    loaded = mq.load(path, model=_shared_twice(meta=True))
    assert loaded["a"] is loaded["b"]
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert torch.equal(q["a"](x, x, x)[0], loaded["a"](x, x, x)[0])
    with safetensors.safe_open(path, "pt") as f:
        assert {k for k in f.keys() if k.endswith(".bias_k")} == {"a.bias_k"}  # stored once
    _rewrite(path, lambda t: t.__setitem__("b.bias_k", t["a.bias_k"] + 1.0))  # a second, different value
    with pytest.raises(mq.CheckpointError, match="b.bias_k"):
        mq.load(path, model=_shared_twice(meta=True))
