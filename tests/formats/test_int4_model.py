"""quantize(model, dtype="int4"): real 4-bit storage, module / state_dict
paths agree, persistence (from_saved) is bit-identical, options and errors."""
import copy

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.entries import quantize_state_dict_entry
from mono_quant.config import QuantConfig
from mono_quant.int4 import Int4Weight
from mono_quant.modules import QuantizedConv2d, QuantizedLinear


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 10, bias=False))


def test_int4_model_has_packed_4bit_buffers():
    model = make_model()
    qmodel, skipped = mq.quantize(model, dtype="int4")
    assert skipped == []
    for name, m in qmodel.named_modules():
        if isinstance(m, QuantizedLinear):
            out_f, in_f = m.weight_shape
            kpad = -(-in_f // 32) * 32
            assert m.weight_format == "int4" and m.weight_group_size == 128
            assert m.weight_qdata.dtype == torch.uint8 and m.weight_qdata.shape == (out_f, kpad // 2)
            assert m.weight_scale.dtype == torch.float16 and m.weight_zero_point.dtype == torch.uint8
            assert m.weight_scale.shape == (out_f, -(-kpad // 128))
    assert not any(t.dtype == torch.int8 for t in qmodel.state_dict().values())
    # the caller's model is untouched
    assert all(isinstance(m, nn.Linear) for m in model if not isinstance(m, nn.ReLU))


def test_int4_report_bits_per_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4096, 64, bias=False))
    result = mq.quantize(model, dtype="int4", group_size=128)
    layer = result.report.layers[0]
    assert layer.dtype == "int4"
    assert layer.bits_per_weight == pytest.approx(4 + 24 / 128)
    assert layer.bits_per_weight <= 4.6
    assert "bits/w" in str(result.report)


def test_int4_output_close_to_float():
    model = make_model()
    x = torch.randn(4, 256)
    for method in ("rtn", "mse", "hqq"):
        qmodel, _ = mq.quantize(model, dtype="int4", group_size=32, method=method)
        for i in (0, 2, 4):  # each layer: ~24 dB weight SQNR gives ~6% output error
            h = torch.randn(4, model[i].in_features)
            assert (qmodel[i](h) - model[i](h)).norm() / model[i](h).norm() < 0.1
        ref, got = model(x), qmodel(x)
        assert (got - ref).norm() / ref.norm() < 0.25


@pytest.mark.parametrize("group_size", [32, 64, 256, None])
def test_int4_group_sizes_and_per_channel(group_size):
    model = make_model()
    qmodel, skipped = mq.quantize(model, dtype="int4", group_size=group_size)
    assert skipped == []
    first = qmodel[0]
    assert first.weight_group_size == group_size
    groups = 1 if group_size is None else -(-256 // group_size)
    assert first.weight_scale.shape == (64, groups)
    w = first.dequantized_weight()
    assert w.shape == (64, 256)
    assert (w - model[0].weight).abs().max() < 0.1


def test_int4_symmetric_zero_points():
    qmodel, _ = mq.quantize(make_model(), dtype="int4", symmetric=True)
    assert bool((qmodel[0].weight_zero_point == 128).all())


def test_int4_conv2d_weight_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1, groups=2))
    qmodel, skipped = mq.quantize(model, dtype="int4", group_size=32)
    assert skipped == []
    conv = qmodel[0]
    assert isinstance(conv, QuantizedConv2d) and conv.weight_qdata.shape == (16, 96 // 2)
    x = torch.randn(2, 8, 10, 10)
    want = nn.functional.conv2d(x, conv.dequantized_weight(), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), want)
    assert (qmodel(x) - model(x)).norm() / model(x).norm() < 0.15


def test_int4_from_saved_rebuild_is_bit_identical():
    qmodel, _ = mq.quantize(make_model(), dtype="int4", group_size=64, method="hqq")
    x = torch.randn(3, 256)
    for m in (qmodel[0], qmodel[2], qmodel[4]):
        tensors = {k: v.clone() for k, v in m.state_dict().items()}
        rebuilt = type(m).from_saved(m.init_kwargs(), m.get_state_attrs(), tensors)
        assert rebuilt.weight_group_size == 64 and rebuilt.weight_format == "int4"
        inp = x if m is qmodel[0] else torch.randn(3, m.weight_shape[1])
        assert torch.equal(rebuilt(inp), m(inp))


def test_int4_state_dict_path_matches_module_path():
    model = make_model()
    qmodel, _ = mq.quantize(model, dtype="int4", group_size=32, method="mse")
    qsd, skipped = mq.quantize(model.state_dict(), dtype="int4", group_size=32, method="mse")
    assert skipped == []
    for key, value in qmodel.state_dict().items():
        assert torch.equal(qsd[key], value), key
    cfg = QuantConfig(dtype="int4", group_size=32, method="mse")
    entry, layer, _ = quantize_state_dict_entry("2.weight", model[2].weight, cfg)
    assert torch.equal(entry["2.weight_qdata"], qmodel[2].weight_qdata)
    assert layer.bits_per_weight < 4.6 * 1.2  # 100 inputs pad to 128 columns


def test_int4_bf16_model_keeps_dtype():
    model = make_model().to(torch.bfloat16)
    qmodel, _ = mq.quantize(model, dtype="int4")
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    y = qmodel(x)
    assert y.dtype == torch.bfloat16
    assert (y.float() - model(x).float()).norm() / model(x).float().norm() < 0.25


def test_quantize_weight_int4():
    w = torch.randn(32, 70)
    qw = mq.quantize_weight(w, dtype="int4", group_size=64, method="rtn")
    assert isinstance(qw, Int4Weight) and qw.shape == (32, 70) and qw.group_size == 64
    assert qw.dequantize().shape == (32, 70)
    per_channel = mq.quantize_weight(w, dtype="int4")
    assert per_channel.group_size is None and per_channel.scale.shape == (32, 1)
    with pytest.raises(ValueError):
        mq.quantize_weight(w, dtype="int4", axis=1)


def test_int4_options_are_validated():
    model = make_model()
    with pytest.raises(ValueError, match="group_size"):
        mq.quantize(model, dtype="int4", group_size=48)
    with pytest.raises(ValueError, match="method"):
        mq.quantize(model, dtype="int4", method="awq")
    with pytest.raises(ValueError, match="int4"):
        mq.quantize(model, dtype="int8", method="hqq")
    with pytest.raises(ValueError, match="int4"):
        mq.quantize(model, dtype="int8", group_size=64)
    q8, _ = mq.quantize(model, dtype="int8")  # int8 unaffected by the int4 defaults
    qdata = q8[0].quantized_weight().qdata
    assert qdata.dtype == torch.int8 and qdata.shape == (64, 256)


def test_int4_config_file_per_channel(tmp_path):
    path = tmp_path / "mono_quant.toml"
    path.write_text('dtype = "int4"\ngroup_size = 0\nmethod = "rtn"\n')
    qmodel, _ = mq.quantize(make_model(), config=path)
    assert qmodel[0].weight_group_size is None and qmodel[0].weight_scale.shape == (64, 1)


def test_int4_nonfinite_layer():
    model = make_model()
    with torch.no_grad():
        model[2].weight[5, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mq.quantize(model, dtype="int4")
    qmodel, skipped = mq.quantize(model, dtype="int4", nonfinite="skip")
    assert [s.name for s in skipped] == ["2"] and isinstance(qmodel[2], nn.Linear)


def test_int4_deepcopy_and_tied_weights():
    model = make_model()
    qmodel, _ = mq.quantize(model, dtype="int4")
    clone = copy.deepcopy(qmodel)
    x = torch.randn(2, 256)
    assert torch.equal(clone(x), qmodel(x))


def test_int4_tiny_layer_shorter_than_a_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2, bias=False))
    qmodel, skipped = mq.quantize(model, dtype="int4", group_size=256)
    assert skipped == []
    assert qmodel[0].weight_qdata.shape == (3, 16) and qmodel[0].weight_scale.shape == (3, 1)
    x = torch.randn(4, 5)
    want = nn.functional.linear(x, qmodel[0].dequantized_weight(), qmodel[0].bias)
    torch.testing.assert_close(qmodel[0](x), want)
    assert qmodel(x).shape == (4, 2)
