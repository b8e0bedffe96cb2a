"""QuantizedLSTM / QuantizedGRU / QuantizedMultiheadAttention: outputs against the float
modules (SQNR per format), exact shapes and dtypes of outputs and states, the options of
the float modules, torch's Transformer layers around them, save / load bit-exact."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import mono_quant as mq
from mono_quant.modules import QuantizedGRU, QuantizedLinear, QuantizedLSTM, QuantizedMultiheadAttention

# (dtype, activations, lowest output SQNR in dB against the float module)
OPTIONS = [("int8", "dynamic", 25.0), ("int8", None, 30.0), ("int4", None, 14.0), ("fp16", None, 45.0),
           ("bf16", None, 30.0)]
OPTION_IDS = [f"{d}-{a}" for d, a, _ in OPTIONS]


def sqnr(ref, out):
    ref, out = ref.float(), out.float()
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean().clamp_min(1e-30)))


def quantized(module, dtype="int8", activations="dynamic", **kw):
    extra = {"group_size": 32} if dtype == "int4" else {}
    q, skipped = mq.quantize(module, dtype=dtype, activations=activations, **extra, **kw)
    return q, skipped


def check_same_structure(ref, out):
    """Same nesting, shapes and dtypes (outputs and states)."""
    if ref is None or isinstance(ref, torch.Tensor):
        assert (out is None) if ref is None else (
            isinstance(out, torch.Tensor) and out.shape == ref.shape and out.dtype == ref.dtype)
        return
    assert type(out) is type(ref) and len(out) == len(ref)
    for r, o in zip(ref, out):
        check_same_structure(r, o)


def flat(x):
    if x is None:
        return []
    return [x] if isinstance(x, torch.Tensor) else [t for part in x for t in flat(part)]


# ---- LSTM / GRU --------------------------------------------------------------------------------

RNN_CASES = {
    "lstm-2layer": lambda: nn.LSTM(24, 40, num_layers=2),
    "lstm-bidir-batchfirst": lambda: nn.LSTM(24, 40, num_layers=2, bidirectional=True, batch_first=True),
    "lstm-nobias": lambda: nn.LSTM(24, 40, bias=False),
    "lstm-proj": lambda: nn.LSTM(24, 40, num_layers=2, proj_size=16, bidirectional=True),
    "gru-2layer-bidir": lambda: nn.GRU(24, 40, num_layers=2, bidirectional=True),
    "gru-batchfirst-nobias": lambda: nn.GRU(24, 40, bias=False, batch_first=True),
}


# every case in int8 dynamic; every format on an LSTM with projections and a bidirectional GRU
RNN_RUNS = [(case, *OPTIONS[0]) for case in RNN_CASES] + [
    (case, *option) for option in OPTIONS[1:] for case in ("lstm-proj", "gru-2layer-bidir")]


@pytest.mark.parametrize("case,dtype,activations,min_sqnr", RNN_RUNS,
                         ids=[f"{c}-{d}-{a}" for c, d, a, _ in RNN_RUNS])
def test_rnn_matches_float(case, dtype, activations, min_sqnr):
    torch.manual_seed(0)
    float_rnn = RNN_CASES[case]().eval()
    q, skipped = quantized(float_rnn, dtype, activations)
    assert isinstance(q, (QuantizedLSTM, QuantizedGRU)) and not skipped
    x = torch.randn(5, 7, 24)  # [T, B, in] or [B, T, in]
    with torch.no_grad():
        ref, out = float_rnn(x), q(x)
    check_same_structure(ref, out)
    for r, o in zip(flat(ref), flat(out)):
        assert sqnr(r, o) > min_sqnr


@pytest.mark.parametrize("case", RNN_CASES)
@pytest.mark.parametrize("dtype,activations", [("int8", "dynamic"), ("fp16", None)])
def test_rnn_and_attention_take_an_empty_batch(case, dtype, activations):
    # as the float modules do: outputs [T, 0, H] (they failed to infer a size with -1)
    float_module = RNN_CASES[case]().eval()
    q, _ = quantized(float_module, dtype, activations)
    x = torch.randn(0, 5, 24) if float_module.batch_first else torch.randn(5, 0, 24)
    got, want = flat(q(x)), flat(float_module(x))
    assert [t.shape for t in got] == [t.shape for t in want]
    attention = nn.MultiheadAttention(32, 4).eval()
    qa, _ = quantized(attention, dtype, activations)
    x = torch.randn(6, 0, 32)
    assert qa(x, x, x)[0].shape == attention(x, x, x)[0].shape == (6, 0, 32)


@pytest.mark.parametrize("case", ["lstm-proj", "gru-2layer-bidir", "lstm-bidir-batchfirst"])
def test_rnn_initial_states_and_unbatched(case):
    torch.manual_seed(1)
    float_rnn = RNN_CASES[case]().eval()
    q, _ = quantized(float_rnn, "int8", None)
    d = 2 if float_rnn.bidirectional else 1
    layers, hidden = float_rnn.num_layers * d, float_rnn.hidden_size
    out_size = float_rnn.proj_size or hidden
    lstm = isinstance(float_rnn, nn.LSTM)
    for batch in (3, None):  # None: unbatched 2-D input and states
        shape = (layers, batch) if batch else (layers,)
        h0 = torch.randn(*shape, out_size)
        hx = (h0, torch.randn(*shape, hidden)) if lstm else h0
        x = torch.randn(batch, 6, 24) if batch and float_rnn.batch_first else (
            torch.randn(6, batch, 24) if batch else torch.randn(6, 24))
        with torch.no_grad():
            ref, out = float_rnn(x, hx), q(x, hx)
        check_same_structure(ref, out)
        for r, o in zip(flat(ref), flat(out)):
            assert sqnr(r, o) > 30


@pytest.mark.parametrize("case", ["lstm-proj", "gru-batchfirst-nobias", "lstm-bidir-batchfirst"])
def test_rnn_packed_sequence_matches_float(case):
    torch.manual_seed(12)
    float_rnn = RNN_CASES[case]().eval()
    q, _ = quantized(float_rnn, "int8", "dynamic")
    lengths = torch.tensor([3, 6, 1, 6, 4])
    x = torch.randn(5, 6, 24) if float_rnn.batch_first else torch.randn(6, 5, 24)
    packed = pack_padded_sequence(x, lengths, batch_first=float_rnn.batch_first, enforce_sorted=False)
    d = 2 if float_rnn.bidirectional else 1
    h0 = torch.randn(float_rnn.num_layers * d, 5, float_rnn.proj_size or float_rnn.hidden_size)
    hx = (h0, torch.randn(float_rnn.num_layers * d, 5, float_rnn.hidden_size)) if isinstance(float_rnn, nn.LSTM) \
        else h0
    with torch.no_grad():
        for state in (None, hx):
            ref, out = float_rnn(packed, state), q(packed, state)
            assert type(out[0]) is type(ref[0])
            assert torch.equal(out[0].batch_sizes, ref[0].batch_sizes)
            assert torch.equal(out[0].sorted_indices, ref[0].sorted_indices)
            check_same_structure(ref[0].data, out[0].data)
            check_same_structure(ref[1], out[1])
            for r, o in zip([ref[0].data, *flat(ref[1])], [out[0].data, *flat(out[1])]):
                assert sqnr(r, o) > 25


def test_rnn_bad_inputs_raise():
    q, _ = quantized(nn.LSTM(8, 16))
    x = torch.randn(4, 2, 8)
    with pytest.raises(RuntimeError, match="input_size"):
        q(torch.randn(4, 2, 9))
    with pytest.raises(RuntimeError, match="hidden size"):
        q(x, (torch.zeros(1, 3, 16), torch.zeros(1, 3, 16)))
    with pytest.raises(RuntimeError, match="floating-point"):
        q(x.long())


def test_rnn_dropout_only_in_training():
    torch.manual_seed(2)
    float_rnn = nn.LSTM(8, 16, num_layers=3, dropout=0.5)
    q, _ = quantized(float_rnn.eval())
    x = torch.randn(5, 2, 8)
    with torch.no_grad():
        assert torch.equal(q(x)[0], q(x)[0])  # eval: deterministic
        q.train()
        torch.manual_seed(3)
        first = q(x)[0]
        torch.manual_seed(4)
        assert not torch.equal(first, q(x)[0])  # dropout between layers


def test_rnn_children_are_quantized_linears_and_reported():
    result = mq.quantize(nn.Sequential(nn.LSTM(16, 32, bidirectional=True)), dtype="int8")
    lstm = result.model[0]
    assert sorted(lstm.child_names()) == ["hh_l0", "hh_l0_reverse", "ih_l0", "ih_l0_reverse"]
    assert all(type(c) is QuantizedLinear for c in lstm.children())
    assert lstm.ih_l0.weight_shape == (128, 16) and lstm.hh_l0.weight_shape == (128, 32)
    reported = {layer.name: layer.type for layer in result.report.layers}
    assert reported == {"0.ih_l0": "LSTM", "0.hh_l0": "LSTM", "0.ih_l0_reverse": "LSTM", "0.hh_l0_reverse": "LSTM"}
    assert result.skipped == []


# ---- MultiheadAttention ------------------------------------------------------------------------


def mha_inputs(batch_first, self_attention, kdim=None):
    torch.manual_seed(5)
    b, tgt, src, e = 3, 5, 7, 32
    shape = (lambda n, d: (b, n, d)) if batch_first else (lambda n, d: (n, b, d))
    query = torch.randn(shape(tgt, e))
    if self_attention:
        return query, query, query
    key = torch.randn(shape(src, kdim or e))
    return query, key, key if kdim is None else torch.randn(shape(src, kdim + 4))


def mha_masks(batch_first, self_attention):
    tgt, src = 5, (5 if self_attention else 7)
    padding = torch.zeros(3, src, dtype=torch.bool)
    padding[1, -2:] = True
    causal = torch.triu(torch.ones(tgt, src, dtype=torch.bool), diagonal=1)
    return [{}, {"key_padding_mask": padding}, {"attn_mask": causal},
            {"attn_mask": causal.float().masked_fill(causal, float("-inf")), "key_padding_mask": padding.float()
             .masked_fill(padding, float("-inf"))}]


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("self_attention", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_matches_float_with_masks(batch_first, self_attention, need_weights):
    torch.manual_seed(6)
    float_mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    q, skipped = quantized(float_mha, "int8", "dynamic")
    assert isinstance(q, QuantizedMultiheadAttention) and not skipped
    query, key, value = mha_inputs(batch_first, self_attention)
    for masks in mha_masks(batch_first, self_attention):
        for average in (True, False):
            with torch.no_grad():
                ref = float_mha(query, key, value, need_weights=need_weights, average_attn_weights=average, **masks)
                out = q(query, key, value, need_weights=need_weights, average_attn_weights=average, **masks)
            check_same_structure(ref, out)
            assert sqnr(ref[0], out[0]) > 25
            if need_weights:
                assert sqnr(ref[1], out[1]) > 25


@pytest.mark.parametrize("dtype,activations,min_sqnr", OPTIONS, ids=OPTION_IDS)
def test_mha_formats_kdim_causal_unbatched(dtype, activations, min_sqnr):
    torch.manual_seed(7)
    float_mha = nn.MultiheadAttention(32, 4, kdim=20, vdim=24, bias=dtype != "bf16").eval()
    q, _ = quantized(float_mha, dtype, activations)
    assert sorted(q.child_names()) == ["k_proj", "out_proj", "q_proj", "v_proj"]
    query, key, value = mha_inputs(False, False, kdim=20)
    causal = torch.triu(torch.ones(5, 7, dtype=torch.bool), diagonal=1)
    calls = [dict(), dict(attn_mask=causal, is_causal=True, need_weights=False)]
    with torch.no_grad():
        for kw in calls:
            ref, out = float_mha(query, key, value, **kw), q(query, key, value, **kw)
            check_same_structure(ref, out)
            assert sqnr(ref[0], out[0]) > min_sqnr
        ref, out = float_mha(query[:, 0], key[:, 0], value[:, 0]), q(query[:, 0], key[:, 0], value[:, 0])
    check_same_structure(ref, out)
    assert sqnr(ref[0], out[0]) > min_sqnr


def test_mha_out_proj_not_listed_skipped_and_add_bias_kv_quantized():
    model = nn.ModuleDict({"a": nn.MultiheadAttention(16, 2), "b": nn.MultiheadAttention(16, 2, add_bias_kv=True)})
    result = mq.quantize(model)
    assert isinstance(result.model["a"], QuantizedMultiheadAttention)
    assert isinstance(result.model["b"], QuantizedMultiheadAttention)  # tests/nn/test_mha_bias_kv.py
    assert result.skipped == []


def _float_mha_of_dequantized(float_mha, q):
    """The float attention with the quantized module's dequantized projections (the reference)."""
    ref = nn.MultiheadAttention(float_mha.embed_dim, float_mha.num_heads, kdim=float_mha.kdim, vdim=float_mha.vdim,
                                add_zero_attn=float_mha.add_zero_attn, batch_first=float_mha.batch_first).eval()
    with torch.no_grad():
        if float_mha._qkv_same_embed_dim:
            ref.in_proj_weight.copy_(q.in_proj.dequantized_weight(torch.float32))
        else:
            for p in "qkv":
                getattr(ref, f"{p}_proj_weight").copy_(getattr(q, f"{p}_proj").dequantized_weight(torch.float32))
        ref.in_proj_bias.copy_(q.in_proj_bias)
        ref.out_proj.weight.copy_(q.out_proj.dequantized_weight(torch.float32))
        ref.out_proj.bias.copy_(q.out_proj.bias)
    return ref


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("self_attention", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_add_zero_attn_matches_float_and_reference(batch_first, self_attention, need_weights):
    torch.manual_seed(13)
    float_mha = nn.MultiheadAttention(32, 4, add_zero_attn=True, batch_first=batch_first).eval()
    q, skipped = quantized(float_mha, "int8", None)
    assert isinstance(q, QuantizedMultiheadAttention) and not skipped and "add_zero_attn=True" in repr(q)
    reference = _float_mha_of_dequantized(float_mha, q)
    query, key, value = mha_inputs(batch_first, self_attention)
    for masks in mha_masks(batch_first, self_attention):
        kw = dict(need_weights=need_weights, **masks)
        with torch.no_grad():
            ref, exact, out = float_mha(query, key, value, **kw), reference(query, key, value, **kw), \
                q(query, key, value, **kw)
        check_same_structure(ref, out)
        assert sqnr(ref[0], out[0]) > 30
        for e, o in zip(flat(exact), flat(out)):
            torch.testing.assert_close(o, e, rtol=1e-4, atol=1e-5)


def test_mha_add_zero_attn_kdim_unbatched_save_load_and_compile(tmp_path):
    torch.manual_seed(14)

    def build():
        return nn.ModuleDict({"attn": nn.MultiheadAttention(32, 4, kdim=20, vdim=24, add_zero_attn=True)})

    model = build().eval()
    q, _ = quantized(model, "int8", "dynamic")
    query, key, value = mha_inputs(False, False, kdim=20)
    with torch.no_grad():
        ref, out = model["attn"](query[:, 0], key[:, 0], value[:, 0]), q["attn"](query[:, 0], key[:, 0], value[:, 0])
        check_same_structure(ref, out)
        assert sqnr(ref[0], out[0]) > 25
        path = tmp_path / "m.mq.safetensors"
        mq.save(q, path)
        with torch.device("meta"):
            skeleton = build()
        loaded = mq.load(path, model=skeleton.eval())
        assert loaded["attn"].add_zero_attn
        for r, o in zip(flat(q["attn"](query, key, value)), flat(loaded["attn"](query, key, value))):
            assert torch.equal(r, o)
        torch._dynamo.reset()
        compiled = torch.compile(q["attn"], fullgraph=True)
        for r, o in zip(flat(q["attn"](query, key, value)), flat(compiled(query, key, value))):
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer_type", ["encoder", "decoder"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_layers_eval_no_grad(layer_type, batch_first):
    torch.manual_seed(8)
    if layer_type == "encoder":
        layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=batch_first)
    else:
        layer = nn.TransformerDecoderLayer(32, 4, dim_feedforward=64, batch_first=batch_first)
    layer.eval()
    q, skipped = mq.quantize(layer, dtype="int8")
    assert isinstance(q.self_attn, QuantizedMultiheadAttention) and not skipped
    x = torch.randn(3, 6, 32) if batch_first else torch.randn(6, 3, 32)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[0, -2:] = True
    with torch.no_grad():  # eval + no_grad: torch tries its fused fast path first
        if layer_type == "encoder":
            ref, out = layer(x, src_key_padding_mask=padding), q(x, src_key_padding_mask=padding)
        else:
            ref, out = layer(x, x, tgt_key_padding_mask=padding), q(x, x, tgt_key_padding_mask=padding)
    assert out.shape == ref.shape and sqnr(ref, out) > 20


def test_transformer_encoder_stack_fast_path_declined():
    torch.manual_seed(9)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2,
                                    enable_nested_tensor=True).eval()
    q, _ = mq.quantize(encoder, include=[nn.MultiheadAttention])  # its Linear layers stay float here
    # torch's TransformerEncoder reads out_proj.weight before its fast-path checks: the .weight view
    x = torch.randn(3, 6, 32)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[0, -2:] = True
    with torch.no_grad():
        ref, out = encoder(x, src_key_padding_mask=padding), q(x, src_key_padding_mask=padding)
    assert not out.is_nested and sqnr(ref[~padding], out[~padding]) > 20


# ---- save / load -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,activations", [("int8", "dynamic"), ("int4", None), ("fp16", None)])
def test_save_load_round_trip_bit_exact(tmp_path, dtype, activations):
    torch.manual_seed(10)

    def build():
        return nn.ModuleDict({"lstm": nn.LSTM(16, 24, num_layers=2, bidirectional=True, proj_size=8),
                              "gru": nn.GRU(16, 24, batch_first=True),
                              "attn": nn.MultiheadAttention(32, 4, batch_first=True),
                              "cross": nn.MultiheadAttention(32, 4, kdim=16, vdim=16)})

    model = build().eval()
    q, _ = quantized(model, dtype, activations)
    path = tmp_path / "m.mq.safetensors"
    mq.save(q, path)
    with torch.device("meta"):
        skeleton = build()
    loaded = mq.load(path, model=skeleton.eval())
    assert type(loaded["lstm"]) is QuantizedLSTM and type(loaded["attn"]) is QuantizedMultiheadAttention
    x, a, m = torch.randn(5, 2, 16), torch.randn(2, 5, 32), torch.randn(7, 2, 16)
    with torch.no_grad():
        for name, args in (("lstm", (x,)), ("gru", (x,)), ("attn", (a, a, a)), ("cross", (a.transpose(0, 1), m, m))):
            for ref, out in zip(flat(q[name](*args)), flat(loaded[name](*args))):
                assert torch.equal(ref, out)


def test_load_refuses_a_file_missing_a_child(tmp_path):
    q, _ = quantized(nn.Sequential(nn.LSTM(8, 16)))
    path = tmp_path / "m.mq.safetensors"
    del q[0].hh_l0
    q[0].add_module("hh_l0", nn.Linear(16, 64))  # saved float: the file has no layer 0.hh_l0
    mq.save(q, path)
    with pytest.raises(mq.CheckpointError, match="0.hh_l0"):
        mq.load(path, model=nn.Sequential(nn.LSTM(8, 16)))


def test_state_dict_paths_keep_attention_float_and_load_back(tmp_path):
    import safetensors.torch

    def build():
        return nn.ModuleDict({"attn": nn.MultiheadAttention(16, 2), "lstm": nn.LSTM(16, 16), "fc": nn.Linear(16, 16)})

    torch.manual_seed(11)
    model = build()
    result = mq.quantize(model.state_dict())
    assert [(s.name, s.type) for s in result.skipped] == [("attn.out_proj", "NonDynamicallyQuantizableLinear")]
    assert "quantize the model" in result.skipped[0].reason
    assert [layer.name for layer in result.report.layers] == ["fc"]
    src, dst = tmp_path / "float.safetensors", tmp_path / "q.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, src)
    report = mq.quantize_checkpoint(src, dst)
    assert [s.name for s in report.skipped] == ["attn.out_proj"]
    loaded = mq.load(dst, model=build())
    x = torch.randn(3, 2, 16)
    with torch.no_grad():
        assert torch.equal(loaded["attn"](x, x, x)[0], model["attn"](x, x, x)[0])
        assert torch.equal(loaded["lstm"](x)[0], model["lstm"](x)[0])
    # with model=: the attention and the LSTM stay float, with a reason
    qmodel, skipped = mq.quantize(model.state_dict(), model=build())
    assert sorted(s.name for s in skipped) == ["attn", "attn.out_proj", "lstm"]
    assert type(qmodel["lstm"]) is nn.LSTM
