"""Mixed precision: quantize() of a model holding mono-quant layers quantizes only its
float layers, lists the others as already quantized, never re-quantizes one, and never
touches the caller's model; each layer runs bit for bit as a single-format quantize."""
import copy
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.errors import AlreadyQuantizedError
from mono_quant.modules.registry import QuantizedModule
from mono_quant.strictness import NothingQuantizedWarning
from mixed_models import D, float_model as _float, formats as _formats, mixed as _mixed


def _snapshot(model):
    """Every tensor (buffers: packed weights, scales) as an independent copy, with the module types."""
    return ({k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
            [(n, type(m).__name__) for n, m in model.named_modules()])


def _same(model, snapshot):
    tensors, types = snapshot
    now = model.state_dict(keep_vars=True)
    assert list(now) == list(tensors)
    for k, v in tensors.items():
        assert now[k].dtype == v.dtype and now[k].shape == v.shape and torch.equal(now[k], v), k
    assert [(n, type(m).__name__) for n, m in model.named_modules()] == types


def test_each_call_quantizes_only_the_float_layers():
    first, second, third = _mixed(_float())
    formats = _formats(third.model)
    assert formats == {"blocks.0.attn.0": "int8", "blocks.0.attn.1": "int8", "blocks.0.mlp.0": "int4",
                       "blocks.0.mlp.2": "int4", "blocks.1.attn.0": "int8", "blocks.1.attn.1": "int8",
                       "blocks.1.mlp.0": "int4", "blocks.1.mlp.2": "int4", "mha.in_proj": "int8",
                       "mha.out_proj": "int8", "head": "fp16"}
    assert type(third.model.extra) is nn.Linear
    assert [r.name for r in second.report.layers] == ["blocks.0.attn.0", "blocks.0.attn.1", "blocks.1.attn.0",
                                                      "blocks.1.attn.1", "mha.in_proj", "mha.out_proj"]
    assert [r.name for r in third.report.layers] == ["head"]
    reasons = {s.name: s.reason for s in third.skipped}
    assert reasons["blocks.0.mlp.0"].startswith("already quantized as int4:")
    assert "quantize the float model" in reasons["blocks.0.mlp.0"]
    assert reasons["blocks.1.attn.1"].startswith("already quantized as int8:")
    # a composite is one layer: listed once, its QuantizedLinear children not on their own
    assert reasons["mha"].startswith("already quantized as int8:")
    assert not any(n.startswith("mha.") for n in reasons)
    assert reasons["extra"] == "not matched by include"


def test_the_callers_partly_quantized_model_is_untouched():
    first, second, _ = _mixed(_float())
    before = _snapshot(first.model)
    again = mq.quantize(first.model, "int8")
    _same(first.model, before)
    # the result owns its copies: writing into them leaves the caller's layers alone
    for name, qm in again.model.named_modules():
        if isinstance(qm, QuantizedModule) and name.startswith("blocks.0.mlp"):
            caller = first.model.get_submodule(name)
            assert qm is not caller
            for key, t in qm.state_dict().items():
                assert t.data_ptr() != caller.state_dict()[key].data_ptr()
                t.zero_()
    _same(first.model, before)


def test_a_second_call_never_requantizes():
    first, _, _ = _mixed(_float())
    before = _snapshot(first.model)
    again = mq.quantize(first.model, "int8")  # every float layer: int8; the int4 MLPs stay int4, bit for bit
    assert all("mlp" not in r.name for r in again.report.layers)
    for name, fmt in _formats(again.model).items():
        assert fmt == ("int4" if ".mlp." in name else "int8"), name
    tensors = again.model.state_dict()
    for key, t in before[0].items():
        if ".mlp." in key:
            assert torch.equal(tensors[key], t) and tensors[key].dtype == t.dtype, key


def test_each_layer_runs_as_a_single_format_quantize():
    model = _float()
    _, _, third = _mixed(model)
    mixed = third.model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single = {fmt: mq.quantize(model, fmt).model for fmt in ("int4", "int8", "fp16")}
    torch.manual_seed(1)
    for name, m in mixed.named_modules():
        if not isinstance(m, QuantizedModule) or name.startswith("mha."):
            continue
        ref = single[m.weight_format].get_submodule(name)
        sd, ref_sd = m.state_dict(), ref.state_dict()
        assert list(sd) == list(ref_sd) and all(torch.equal(sd[k], ref_sd[k]) for k in sd), name
        x = torch.randn(3, 5, m.weight_shape[1])
        assert torch.equal(m(x), ref(x)), name
    x = torch.randn(2, 7, D)
    mha, ref = mixed.mha, single["int8"].mha
    assert torch.equal(mha(x, x, x)[0], ref(x, x, x)[0])
    assert mixed(x).shape == (2, 7, 32)


def test_a_fully_quantized_model_warns_why_nothing_was_quantized():
    qmodel = mq.quantize(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)), "int4").model
    before = _snapshot(qmodel)
    with pytest.warns(NothingQuantizedWarning, match="every layer mono-quant replaces is already quantized"):
        result = mq.quantize(qmodel, "int8")
    assert [s.reason.split(":")[0] for s in result.skipped] == ["already quantized as int4"] * 2
    assert _formats(result.model) == {"0": "int4", "2": "int4"} and result.report.layers == []
    _same(qmodel, before)
    _same(result.model, before)


def test_include_naming_a_quantized_layer_says_so():
    first, _, _ = _mixed(_float())
    with pytest.warns(NothingQuantizedWarning):
        result = mq.quantize(first.model, "int8", include=["blocks.0.mlp.0"])
    reason = {s.name: s.reason for s in result.skipped}["blocks.0.mlp.0"]
    assert reason.startswith("already quantized as int4 (include=['blocks.0.mlp.0'] names it")
    # a composite's child counts as a layer for include (no "matches no layer" ConfigError), not requantized
    with pytest.warns(NothingQuantizedWarning):
        mq.quantize(_mixed(_float())[1].model, "int4", include=["mha.in_proj"])
    with pytest.raises(mq.ConfigError, match="match"):
        mq.quantize(first.model, "int8", include=["blocks.0.mlp.9"])


def test_layers_being_replaced_are_not_deep_copied(monkeypatch):
    first, _, _ = _mixed(_float())
    replaced = {id(first.model.get_submodule(n).weight) for n in ("blocks.0.attn.0", "head", "extra")}
    copied = []
    original = nn.Parameter.__deepcopy__

    def spy(self, memo):
        copied.append(id(self))
        return original(self, memo)

    monkeypatch.setattr(nn.Parameter, "__deepcopy__", spy)
    mq.quantize(first.model, "int8")
    assert copied and not replaced & set(copied)  # (the LayerNorms' parameters are copied)


def test_a_quantized_state_dict_is_still_refused():
    first, _, _ = _mixed(_float())
    with pytest.raises(AlreadyQuantizedError, match="load it into the quantized model"):
        mq.quantize(first.model.state_dict(), "int8")


def test_mixed_model_to_state_dict_keys_and_deepcopy():
    _, _, third = _mixed(_float())
    mixed = third.model
    keys = set(mixed.state_dict())
    assert {"blocks.0.mlp.0.weight_qdata", "blocks.0.attn.0.weight_packed", "head.weight", "extra.weight",
            "mha.in_proj.weight_packed"} <= keys
    assert mixed.head.weight.dtype == torch.float32 and mixed.state_dict()["head.weight"].dtype == torch.float16
    x = torch.randn(2, 5, D)
    expected = mixed(x)
    assert torch.equal(copy.deepcopy(mixed)(x), expected)
    assert torch.equal(mixed.to("cpu")(x), expected)


def test_mixed_model_compiles():
    _, _, third = _mixed(_float())
    x = torch.randn(2, 5, D)
    eager = third.model(x)
    compiled = torch.compile(third.model)
    torch.testing.assert_close(compiled(x), eager, rtol=1e-4, atol=1e-4)


def test_nothing_quantized_counts_the_layers_quantized_already():
    first, _, _ = _mixed(_float())
    with pytest.warns(NothingQuantizedWarning, match=r"float weights \(and 4 layer\(s\) quantized already"):
        mq.quantize(first.model, "int8", exclude=["blocks.*.attn.*", "mha", "extra", "head"])


def test_a_type_pattern_names_a_layer_an_earlier_call_quantized():
    """include=[nn.LSTM] on a model whose LSTM is already quantized said "matches no layer: check the
    spelling", where include=["lstm"] explains it is never quantized twice."""
    import warnings
    from torch import nn as tnn

    class M(tnn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = tnn.LSTM(8, 8), tnn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.lstm(x)[0])

    partly = mq.quantize(M(), "int8", include=["lstm"]).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mq.quantize(partly, "int8", include=[tnn.LSTM])
    reasons = {s.name: s.reason for s in result.skipped}
    assert "include=[LSTM] names it, but it is never quantized twice" in reasons["lstm"]
