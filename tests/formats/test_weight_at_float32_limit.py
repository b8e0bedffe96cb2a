"""Weights near float32's maximum (3e38): the report's SQNR is a finite figure measured in
float64 (never a 'math domain error', Inf or NaN from an overflowed float32 sum), and a weight
whose codes would dequantize to Inf is refused naming the layer, never stored silently."""
import math
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.tensor import sqnr_db

FLT_MAX = torch.finfo(torch.float32).max


def _model(*values):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    with torch.no_grad():
        for i, v in enumerate(values):
            model[0].weight[0, i] = v
    return model


def _float64_sqnr(w: torch.Tensor, wq: torch.Tensor) -> float:
    w, wq = w.detach().double(), wq.detach().double()
    return 10 * math.log10(float(w.pow(2).sum()) / float((w - wq).pow(2).sum()))


@pytest.mark.parametrize("dtype, symmetric, granularity", [
    ("int8", None, "per_channel"), ("int8", False, "per_channel"), ("int8", None, "per_tensor"),
    ("uint8", None, "per_channel"), ("uint8", True, "per_tensor")])
@pytest.mark.parametrize("big", [3e38, -3e38, 1e20])
def test_sqnr_is_measured_in_float64(isa, dtype, symmetric, granularity, big):
    model = _model(big, -0.5 * big)
    result = mq.quantize(model, dtype=dtype, symmetric=symmetric, granularity=granularity, include=["0"])
    sqnr = result.report.layers[0].weight_sqnr_db
    w = result.model[0].weight
    assert torch.isfinite(w).all()
    assert math.isfinite(sqnr)
    assert sqnr == pytest.approx(_float64_sqnr(model[0].weight, w), abs=0.01)


def test_state_dict_and_checkpoint_report_it_too(tmp_path):
    model = _model(3e38)
    entries = mq.quantize(model.state_dict())
    (layer,) = entries.report.layers
    assert math.isfinite(layer.weight_sqnr_db) and layer.weight_sqnr_db > 100
    src = tmp_path / "model.safetensors"
    save_file(model.state_dict(), os.fspath(src))
    result = mq.quantize_checkpoint(src, tmp_path / "q.safetensors", measure_error=True)
    (layer,) = result.report.layers
    assert layer.weight_sqnr_db == pytest.approx(entries.report.layers[0].weight_sqnr_db, abs=0.01)


def test_bf16_cast_of_huge_weights_has_a_finite_sqnr():
    result = mq.quantize(_model(3e38, -1e30), dtype="bf16")
    assert math.isfinite(result.report.layers[0].weight_sqnr_db)


@pytest.mark.parametrize("dtype, symmetric", [("int8", True), ("int8", False), ("uint8", False)])
def test_codes_that_dequantize_to_inf_are_refused_naming_the_layer(isa, dtype, symmetric):
    model = _model(FLT_MAX, -FLT_MAX)
    for source, where in ((model, "layer '0' (Linear)"), (model.state_dict(), "tensor '0.weight'")):
        with pytest.raises(mq.NonFiniteWeightError, match="float32's limit") as info:
            mq.quantize(source, dtype=dtype, symmetric=symmetric)
        assert where in str(info.value) and "output channel 0" in str(info.value)
    qmodel, skipped = mq.quantize(model, dtype=dtype, symmetric=symmetric, nonfinite="skip")
    assert [s.name for s in skipped] == ["0"] and "float32's limit" in skipped[0].reason
    assert type(qmodel[0]) is nn.Linear
    with pytest.raises(mq.NonFiniteWeightError, match="float32's limit"):
        mq.quantize_weight(model[0].weight, dtype, axis=None, symmetric=symmetric)


def test_checkpoint_refuses_codes_that_dequantize_to_inf(tmp_path):
    src = tmp_path / "model.safetensors"
    save_file(_model(FLT_MAX).state_dict(), os.fspath(src))
    with pytest.raises(mq.NonFiniteWeightError, match="tensor '0.weight'.*float32's limit"):
        mq.quantize_checkpoint(src, tmp_path / "q.safetensors")


def test_sqnr_db_never_crashes():
    assert sqnr_db(1e77, math.inf) != sqnr_db(1e77, math.inf)  # NaN: an overflowed sum is unknown
    assert math.isnan(sqnr_db(math.inf, math.inf))
    assert sqnr_db(1e300, 1e-300) == pytest.approx(6000.0)
    assert sqnr_db(1.0, 0.0) == math.inf and sqnr_db(0.0, 1.0) == 0.0


@pytest.mark.parametrize("dtype", ["int8", "int4", "uint8"])
@pytest.mark.parametrize("source", ["model", "state_dict"])
def test_a_finite_float64_weight_beyond_float32_is_not_called_nan(dtype, source):
    """A float64 weight of 1e300 is finite: the error (and the skip reason) says it is beyond
    float32's range, which the kernels quantize through, not "NaN or Inf"."""
    model = _model().double()
    with torch.no_grad():
        model[0].weight[3, 5] = 1e300
    what = model if source == "model" else model.state_dict()
    with pytest.raises(mq.NonFiniteWeightError, match=r"values beyond float32's range \(\|w\| up to 1e\+300") as info:
        mq.quantize(what, dtype=dtype)
    assert "NaN" not in str(info.value) and info.value.row == 3
    skipped = mq.quantize(what, dtype=dtype, nonfinite="skip").skipped
    assert len(skipped) == 1 and "beyond float32's range" in skipped[0].reason
    with torch.no_grad():
        model[0].weight[3, 5] = float("inf")  # a real Inf keeps its name
    with pytest.raises(mq.NonFiniteWeightError, match="NaN or Inf"):
        mq.quantize(model if source == "model" else model.state_dict(), dtype=dtype)
