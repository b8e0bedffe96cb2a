"""quantize_weight(): bit-identical to torch, axes, per-tensor, dtypes, errors."""
import pytest
import torch

import mono_quant as mq
from conftest import torch_per_channel, torch_per_tensor


def _w(shape, dtype=torch.float32, seed=0):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.2).to(dtype)


@pytest.mark.parametrize("shape,axis", [((16, 33), 0), ((16, 33), 1), ((16, 33), -1), ((8, 3, 3, 3), 0),
                                        ((8, 5, 3, 3), 1), ((4, 6, 2, 5), 3), ((1, 1), 0), ((7,), 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_bit_identical_to_torch_per_channel(shape, axis, dtype, symmetric):
    w = _w(shape, dtype)
    qw = mq.quantize_weight(w, "int8", axis=axis, symmetric=symmetric)
    assert qw.qdata.dtype == torch.int8 and qw.qdata.shape == w.shape
    assert qw.scale.dtype == torch.float32 and qw.zero_point.dtype == torch.int32
    assert qw.axis == axis % w.dim()
    assert torch.equal(qw.qdata, torch_per_channel(w, qw.scale, qw.zero_point, axis % w.dim()))
    if symmetric:
        assert (qw.zero_point == 0).all() and qw.qdata.min() >= -127
    ref = torch.quantize_per_channel(w.float(), qw.scale.double(), qw.zero_point.long(), axis % w.dim(), torch.qint8)
    assert torch.equal(qw.dequantize(), ref.dequantize())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_bit_identical_to_torch_per_tensor(dtype, symmetric):
    w = _w((33, 65), dtype, seed=1)
    qw = mq.quantize_weight(w, "int8", axis=None, symmetric=symmetric)
    assert qw.scale.shape == (1,) and qw.axis is None
    assert torch.equal(qw.qdata, torch_per_tensor(w, qw.scale[0], qw.zero_point[0]))
    assert torch.equal(qw.dequantize(), torch.quantize_per_tensor(
        w.float(), float(qw.scale[0]), int(qw.zero_point[0]), torch.qint8).dequantize())


def test_uint8_and_torch_dtype_names():
    w = _w((5, 40))
    qw = mq.quantize_weight(w, torch.uint8)
    assert qw.qdata.dtype == torch.uint8 and qw.dtype == "uint8"
    assert torch.equal(qw.qdata, torch_per_channel(w, qw.scale, qw.zero_point, 0, torch.quint8))
    assert mq.quantize_weight(w, "qint8").dtype == "int8"


def test_scales_match_torch_observer_formula():
    w = _w((12, 50), seed=4)
    obs = torch.ao.quantization.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8,
                                                         qscheme=torch.per_channel_affine)
    obs(w)
    scale, zp = obs.calculate_qparams()
    qw = mq.quantize_weight(w, "int8")
    assert torch.equal(qw.scale, scale.float()) and torch.equal(qw.zero_point, zp.int())


def test_float64_and_non_contiguous_inputs():
    w = _w((10, 30)).double()
    qw = mq.quantize_weight(w)
    assert torch.equal(qw.qdata, mq.quantize_weight(w.float()).qdata)
    t = _w((30, 10)).t()  # non-contiguous
    assert not t.is_contiguous()
    assert torch.equal(mq.quantize_weight(t).qdata, mq.quantize_weight(t.contiguous()).qdata)


def test_input_is_not_modified_and_grad_ok():
    w = _w((8, 8)).requires_grad_()
    before = w.detach().clone()
    mq.quantize_weight(w)
    assert torch.equal(w.detach(), before) and w.grad is None


def test_dequantize_error_is_at_most_half_a_step():
    w = _w((32, 257), seed=7)
    qw = mq.quantize_weight(w)
    err = (qw.dequantize() - w).abs()
    assert (err <= qw.scale[:, None] / 2 * (1 + 1e-5)).all()


@pytest.mark.parametrize("call,exc,match", [
    (lambda: mq.quantize_weight([1.0, 2.0]), TypeError, "torch.Tensor"),
    (lambda: mq.quantize_weight(torch.ones(3, 3, dtype=torch.int32)), TypeError, "floating-point"),
    (lambda: mq.quantize_weight(torch.ones(3, 3), "int3"), ValueError, "'int8'"),
    (lambda: mq.quantize_weight(torch.ones(3, 3), "fp16"), ValueError, "cast"),
    (lambda: mq.quantize_weight(torch.ones(3, 3), axis=2), ValueError, "out of range"),
    (lambda: mq.quantize_weight(torch.ones(3, 3), axis=1.5), TypeError, "axis"),
    (lambda: mq.quantize_weight(torch.tensor(1.0), axis=0), ValueError, "axis=None"),
    (lambda: mq.quantize_weight(torch.ones(3, 3), group_size=2), ValueError, "group_size"),
])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_nonfinite_weight_names_the_channel():
    w = _w((6, 20))
    w[4, 3] = float("nan")
    with pytest.raises(mq.NonFiniteWeightError, match="channel 4") as info:
        mq.quantize_weight(w)
    assert info.value.row == 4
    with pytest.raises(ValueError, match="NaN or Inf"):
        mq.quantize_weight(w, axis=None)
