"""Layers beyond exact nn.Linear / nn.Conv2d / nn.Embedding: GPT-2's Conv1D,
nn.Conv1d, user subclasses opted in by type, nn.MultiheadAttention and RNNs
(kept float with a reason), and tied weights (never a larger model)."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.layer_support import OwnForwardReplacedWarning, TiedWeightWarning
from mono_quant.modules import QuantizedConv1d, QuantizedLinear


def _sqnr(ref, out):
    ref, out = ref.detach(), out.detach()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum()))


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_gpt2_conv1d_quantized_along_output_features(dtype):
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D
    torch.manual_seed(0)
    layer = conv1d(48, 64)  # nf=48 outputs, nx=64 inputs: weight [64, 48]
    layer.weight.data[:, 0] *= 50  # one loud output feature: per-output scales keep the others fine
    model = nn.Sequential(layer)
    q = mq.quantize(model, dtype=dtype).model[0]
    assert type(q).__name__ == "QuantizedGPT2Conv1D" and q.weight_shape == (48, 64)
    linear = nn.Linear(64, 48)
    linear.weight.data, linear.bias.data = layer.weight.data.t().clone(), layer.bias.data.clone()
    ql = mq.quantize(nn.Sequential(linear), dtype=dtype).model[0]
    x = torch.randn(3, 5, 64)
    assert torch.equal(q(x), ql(x))  # exactly the Linear of the same function
    assert _sqnr(layer(x), q(x)) > (35 if dtype == "int8" else 20)


def test_gpt2_conv1d_save_load(tmp_path):
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D
    model = nn.Sequential(conv1d(32, 64), nn.ReLU(), conv1d(16, 32))
    result = mq.quantize(model)
    mq.save(result, tmp_path / "m.safetensors")
    loaded = mq.load(tmp_path / "m.safetensors", model=nn.Sequential(conv1d(32, 64), nn.ReLU(), conv1d(16, 32)))
    x = torch.randn(4, 64)
    assert torch.equal(loaded(x), result.model(x))


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
@pytest.mark.parametrize("kwargs", [dict(), dict(stride=2, padding=1), dict(padding="same", dilation=2),
                                    dict(groups=4, padding=2, padding_mode="reflect")],
                         ids=["plain", "stride-pad", "same-dilated", "groups-reflect"])
def test_conv1d(dtype, kwargs):
    torch.manual_seed(0)
    conv = nn.Conv1d(16, 32, 5, **kwargs)
    q = mq.quantize(nn.Sequential(conv), dtype=dtype).model[0]
    assert isinstance(q, QuantizedConv1d)
    x = torch.randn(2, 16, 40)
    assert q(x).shape == conv(x).shape and q(x[0]).shape == conv(x[0]).shape
    assert _sqnr(conv(x).detach(), q(x)) > (30 if dtype == "int8" else 15)
    # model code reads the float layer's own 1-D geometry (Whisper: conv.stride[0])
    for name in ("kernel_size", "stride", "padding", "dilation"):
        assert getattr(q, name) == getattr(conv, name), name


def test_conv1d_save_load(tmp_path):
    model = nn.Sequential(nn.Conv1d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv1d(16, 4, 1))
    result = mq.quantize(model)
    mq.save(result, tmp_path / "c.safetensors")
    with torch.device("meta"):
        skeleton = nn.Sequential(nn.Conv1d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv1d(16, 4, 1))
    loaded = mq.load(tmp_path / "c.safetensors", model=skeleton)
    x = torch.randn(2, 8, 20)
    assert torch.equal(loaded(x), result.model(x))
    assert loaded[0].stride == (1,) and loaded[0].padding == (1,) and loaded[0].kernel_size == (3,)


def test_linear_subclass_opted_in_by_type():
    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(MyLinear(16, 16), nn.Linear(16, 16))
    skipped = mq.quantize(model).skipped
    assert [s.name for s in skipped] == ["0"] and "include=[MyLinear]" in skipped[0].reason
    result = mq.quantize(model, include=[MyLinear, nn.Linear])
    assert isinstance(result.model[0], QuantizedLinear) and not result.skipped
    x = torch.randn(2, 16)
    assert _sqnr(model(x).detach(), result.model(x)) > 30
    # naming the base type does not opt in its subclasses
    assert [s.name for s in mq.quantize(model, include=[nn.Linear]).skipped] == ["0"]


def test_a_subclass_with_its_own_forward_opted_in_by_type_warns():
    class Doubling(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(Doubling(16, 16), nn.Linear(16, 16), Doubling(16, 16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = mq.quantize(model, include=[Doubling, nn.Linear])
    own = [w for w in caught if issubclass(w.category, OwnForwardReplacedWarning)]
    assert len(own) == 1 and own[0].filename == __file__  # once, at the caller's line
    assert "include=[Doubling] replaces Doubling layers by QuantizedLinear" in str(own[0].message)
    assert "own forward no longer runs" in str(own[0].message)
    assert isinstance(result.model[0], QuantizedLinear)
    with warnings.catch_warnings():  # (a subclass without a forward of its own: nothing to say)
        warnings.simplefilter("error")

        class Plain(nn.Linear):
            pass

        mq.quantize(nn.Sequential(Plain(16, 16)), include=[Plain])


def test_multihead_attention_and_rnns_not_included_stay_float_with_reasons():
    model = nn.Module()
    model.attn = nn.MultiheadAttention(16, 4)
    model.lstm, model.gru, model.rnn = nn.LSTM(16, 16), nn.GRU(16, 16), nn.RNN(16, 16)
    model.head = nn.Linear(16, 16)
    result = mq.quantize(model, include=[nn.modules.linear.NonDynamicallyQuantizableLinear, nn.Linear])
    reasons = {s.name: s.reason for s in result.skipped}
    assert "include" in reasons["attn"] and "as a whole" in reasons["attn.out_proj"]
    assert "include" in reasons["lstm"] and "include" in reasons["gru"] and "include" in reasons["rnn"]
    assert [layer.name for layer in result.report.layers] == ["head"]
    x = torch.randn(5, 2, 16)
    assert torch.equal(result.model.attn(x, x, x)[0], model.attn(x, x, x)[0])
    # by default they are quantized as a whole (tests/nn/test_rnn_attention.py)
    result = mq.quantize(model)
    assert result.skipped == []


def _tied_lm():
    model = nn.Module()
    model.embed = nn.Embedding(256, 64)
    model.body = nn.Linear(64, 64)
    model.head = nn.Linear(64, 256, bias=False)
    model.head.weight = model.embed.weight
    return model


def test_tied_head_stays_float_and_warns():
    model = _tied_lm()
    with pytest.warns(TiedWeightWarning, match="'head'"):
        result = mq.quantize(model)
    reasons = {s.name: s.reason for s in result.skipped}
    assert "tied to 'embed'" in reasons["head"]
    assert result.report.model_bytes_after < result.report.model_bytes_before
    assert result.model.head.weight is result.model.embed.weight  # still tied in the copy


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_tied_head_with_embeddings_is_smaller(dtype):
    model = _tied_lm()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TiedWeightWarning)
        result = mq.quantize(model, dtype=dtype, embeddings=True)
    assert {layer.name for layer in result.report.layers} == {"embed", "body", "head"}
    assert result.report.model_bytes_after < result.report.model_bytes_before
