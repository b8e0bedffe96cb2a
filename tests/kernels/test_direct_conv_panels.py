"""The direct conv on panels (``_C.dconv_panels_int8``, ``_C.dconv_panels``, ``_C.dconv2d``,
``_C.dconv2d_int8``; csrc/h16_dconv.c, bind_dconv.c): hypothesis draws the geometry (batch 0,
groups, kernel, stride, padding, dilation, images down to one pixel, channel counts across the
16-lane and 64-channel block tails), int8 weights (symmetric or not), input
layouts, the kernel level and the thread count.  A valid call agrees with torch's float64 conv
of the dequantized weight to float32 rounding, gives the same bits at every level and thread
count, kept panels or filled per call; the 16-bit panels give h16_conv2d(direct=True)'s bits;
an invalid call raises a clear error."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import mono_quant as mq
from mono_quant import _C
from mono_quant.kernels.direct_conv import int8_conv_arrays
from conftest import SUPPORTED, at_isa
from half_conv_specials import check_specials, draw_conv_operands
from test_fp16_properties import ENCODINGS

SETTINGS = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _int8_layer(cin, cout, k, groups, symmetric, seed=0, granularity="per_channel"):
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, groups=groups)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(cout, 1, 1, 1) * 4)  # channels of different ranges
    return mq.quantize(nn.Sequential(conv), dtype="int8", activations=None, symmetric=symmetric,
                       granularity=granularity).model[0]


def _dequantized(layer):
    kh, kw = layer.kernel_size2d
    k = layer.in_channels // layer.groups * kh * kw
    return layer._dequantized_packed({"out_features": layer.out_channels, "in_features": k,
                                      "groups": layer.groups})


def _bound(x, w, bias, stride, padding, dilation, groups):
    xd, wd = torch.from_numpy(x).double(), w.double()
    bd = None if bias is None else torch.from_numpy(bias).double()
    exact = F.conv2d(xd, wd, bd, stride, padding, dilation, groups)
    mag = F.conv2d(xd.abs(), wd.abs(), None if bd is None else bd.abs(), stride, padding, dilation, groups)
    return exact, (w.shape[1] * w.shape[2] * w.shape[3] + 2) * 2.0 ** -24 * mag


@SETTINGS
@given(data=st.data(), isa=st.sampled_from(SUPPORTED), nthreads=st.sampled_from([1, 2, 3]))
def test_int8_panels_conv_matches_the_dequantized_conv(data, isa, nthreads):
    draw = data.draw
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1 if groups == 1 else 2, 7))  # (depthwise weights are not packed)
    cout = groups * draw(st.sampled_from([1, 5, 16, 17, 33, 64, 65, 80]))  # lane and block tails
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    height = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]) + draw(st.integers(0, 7))
    width = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]) + draw(st.integers(0, 7))
    batch = draw(st.integers(0, 3))
    layer = _int8_layer(cin, cout, (kh, kw), groups, draw(st.booleans()),
                        granularity=draw(st.sampled_from(["per_channel", "per_tensor"])))
    bias = layer.bias if draw(st.booleans()) else None
    arrays = int8_conv_arrays(layer.weight_packed, layer.weight_scale, layer.weight_zero_point, bias, cout)
    x = torch.randn(batch, cin, height, width).numpy()
    if draw(st.booleans()):  # channels-last memory: the C layer copies
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    geometry = ((kh, kw), stride, padding, dilation, groups)
    with at_isa(isa):
        panels = _C.dconv_panels_int8(*arrays, cout, cin // groups, (kh, kw), groups, nthreads=nthreads)
        y = _C.dconv2d(x, *panels, cout, *geometry, nthreads=nthreads)
        once = _C.dconv2d_int8(x, *arrays, cout, *geometry, nthreads=nthreads)
    with at_isa("scalar"):
        scalar = _C.dconv2d(x, *_C.dconv_panels_int8(*arrays, cout, cin // groups, (kh, kw), groups), cout, *geometry)
    assert np.array_equal(y, once) and np.array_equal(y, scalar)  # kept or per call, any level and threads
    exact, bound = _bound(x, _dequantized(layer), None if bias is None else bias.detach().numpy(), stride, padding,
                          dilation, groups)
    got = torch.from_numpy(y).double()
    assert got.shape == exact.shape
    assert bool(((got - exact).abs() <= bound).all())


@SETTINGS
@given(data=st.data(), encoding=st.sampled_from(ENCODINGS + ["float32"]), isa=st.sampled_from(SUPPORTED),
       nthreads=st.sampled_from([1, 2]))
def test_float_panels_conv_is_the_direct_h16_conv(data, encoding, isa, nthreads):
    draw = data.draw
    groups = draw(st.sampled_from([1, 2]))
    cin, cout = groups * draw(st.integers(1, 5)), groups * draw(st.sampled_from([1, 9, 16, 70]))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride, padding = (draw(st.integers(1, 2)),) * 2, (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    height, width = kh + draw(st.integers(0, 6)), kw + draw(st.integers(0, 6))
    batch = draw(st.integers(0, 2))
    x, w_bits, w, is_bf16, bias = draw_conv_operands(draw, "float16" if encoding == "float32" else encoding,
                                                     (batch, cin, height, width), (cout, cin // groups, kh, kw))
    if encoding == "float32":
        w_bits, is_bf16 = w.numpy(), False
    with at_isa(isa):
        panels = _C.dconv_panels(w_bits, is_bf16, bias, groups, nthreads=nthreads)
        y = _C.dconv2d(x, *panels, cout, (kh, kw), stride, padding, (1, 1), groups, nthreads=nthreads,
                       tap_major=False)
        if encoding == "float32":  # the level's transpose (f32_dconv_panel) is its scalar twin's, exactly
            with at_isa("scalar"):
                scalar_panels = _C.dconv_panels(w_bits, is_bf16, bias, groups, nthreads=nthreads)
            assert all(np.array_equal(a.view(np.int32), b.view(np.int32)) for a, b in zip(panels, scalar_panels))
        if encoding != "float32" and isa != "scalar":  # the 16-bit weight's direct conv: the same bits
            want = _C.h16_conv2d(x, w_bits, is_bf16, bias, stride, padding, (1, 1), groups, nthreads=nthreads,
                                 direct=True)
            assert np.array_equal(y, want, equal_nan=True)
    exact, bound = _bound(x, w, bias, stride, padding, (1, 1), groups)
    got, fine = check_specials(y, exact)
    assert bool(((got - exact).abs()[fine] <= bound[fine]).all())


def _args():
    layer = _int8_layer(8, 20, 3, 2, True)
    return layer, int8_conv_arrays(layer.weight_packed, layer.weight_scale, layer.weight_zero_point, layer.bias, 20)


def test_bad_arguments_raise_clear_errors():
    layer, (packed, scale, zp, bias) = _args()
    x = torch.randn(1, 8, 6, 6).numpy()
    panels, biases = _C.dconv_panels_int8(packed, scale, zp, bias, 20, 4, (3, 3), 2)
    geometry = ((3, 3), (1, 1), (1, 1), (1, 1), 2)
    bad_panels = [
        (lambda: _C.dconv_panels_int8(packed[:-1], scale, zp, bias, 20, 4, (3, 3), 2), ValueError, "bytes"),
        (lambda: _C.dconv_panels_int8(packed, scale[:-1], zp, bias, 20, 4, (3, 3), 2), ValueError, "entries"),
        (lambda: _C.dconv_panels_int8(packed, scale, zp.astype(np.int64), bias, 20, 4, (3, 3), 2), TypeError,
         "int32"),
        (lambda: _C.dconv_panels_int8(packed, scale, zp, bias[:3], 20, 4, (3, 3), 2), ValueError, "bias"),
        (lambda: _C.dconv_panels_int8(packed, scale, zp, bias, 20, 4, (3, 3), 3), ValueError, "groups"),
        (lambda: _C.dconv_panels_int8(packed, scale, zp, bias, 20, 0, (3, 3), 2), ValueError, "in_channels"),
        (lambda: _C.dconv_panels_int8(packed, scale, zp, bias, 20, 4, (0, 3), 2), ValueError, "kernel_size"),
        (lambda: _C.dconv_panels_int8(packed, scale, zp, bias, 20, 4, 3, 2), TypeError, "pair"),
        (lambda: _C.dconv_panels(np.zeros((4, 2, 3), np.float32), False, None, 1), ValueError, "4-D"),
        (lambda: _C.dconv_panels(np.zeros((4, 2, 3, 3), np.float64), False, None, 1), TypeError, "float32"),
        (lambda: _C.dconv_panels(np.zeros((4, 2, 3, 3), np.float32), True, None, 1), TypeError, "bf16"),
        (lambda: _C.dconv_panels(np.zeros((4, 2, 3, 3), np.float32), False, None, 3), ValueError, "groups"),
    ]
    bad_convs = [
        (lambda: _C.dconv2d(x, panels[:-1], biases, 20, *geometry), ValueError, "panels"),
        (lambda: _C.dconv2d(x, panels, biases[:-1], 20, *geometry), ValueError, "panels"),
        (lambda: _C.dconv2d(x[:, :6], panels, biases, 20, *geometry), ValueError, "panels"),
        (lambda: _C.dconv2d(x[0], panels, biases, 20, *geometry), ValueError, "4-D"),
        (lambda: _C.dconv2d(x.astype(np.float64), panels, biases, 20, *geometry), TypeError, "float32"),
        (lambda: _C.dconv2d(x, panels, biases, 20, (3, 3), (1, 1), (1, 1), (1, 1), 3), ValueError, "groups"),
        (lambda: _C.dconv2d(x, panels, biases, 20, (3, 3), (0, 1), (1, 1), (1, 1), 2), ValueError, "stride"),
        (lambda: _C.dconv2d(x, panels, biases, 20, (3, 3), (1, 1), (-1, 1), (1, 1), 2), ValueError, "padding"),
        (lambda: _C.dconv2d(x, panels, biases, 20, (3, 3), (1, 1), (0, 0), (4, 4), 2), ValueError, "smaller"),
        (lambda: _C.dconv2d(x, panels, biases, 20, (3, 3), (1, 1), (1 << 40, 1), (1, 1), 2), ValueError, "padding"),
        (lambda: _C.dconv2d(x, panels, biases, 20, *geometry, nthreads=0), ValueError, "nthreads"),
        (lambda: _C.dconv2d_int8(x, packed, scale, zp, bias, 20, (3, 3), (1, 1), (1, 1), (1, 1), 1), ValueError,
         "bytes"),
        (lambda: _C.dconv2d_int8(x, packed[::2], scale, zp, bias, 20, *geometry), ValueError, "bytes"),
    ]
    for call, error, words in bad_panels + bad_convs:
        with pytest.raises(error) as info:
            call()
        assert words in str(info.value), str(info.value)


def test_nan_and_inf_inputs_reach_their_outputs():
    layer, arrays = _args()
    x = torch.randn(2, 8, 5, 5)
    x[0, 3, 2, 2], x[1, 0, 0, 0] = float("nan"), float("inf")
    y = torch.from_numpy(_C.dconv2d_int8(x.numpy(), *arrays, 20, (3, 3), (1, 1), (1, 1), (1, 1), 2))
    want = F.conv2d(x, _dequantized(layer), layer.bias, 1, 1, 1, 2)
    assert torch.equal(torch.isnan(y), torch.isnan(want))
    fine = torch.isfinite(want)
    assert torch.allclose(y[fine], want[fine], atol=1e-4)


@pytest.mark.parametrize("own", [False, True])
def test_panels_filled_inside_the_conv_give_the_kept_panels_bits(own):
    """Per-call panels are filled inside the conv's region, each block by the first thread that needs it,
    or (own: the branch of a thread that finds the block being filled by another) into a copy of its own:
    every way gives the kept panels' bits, at every level and thread count.  The shapes pass the split
    threshold (2 M multiply-adds) with one to three blocks of 64 channels and several strips."""
    torch.manual_seed(1)  # (the split does not depend on the host's load: conftest turns the back-off off)
    _C.dconv_own_panels_for_tests(own)
    splits = int(_C.linear_kernels()["split_calls"])
    try:
        for cin, cout, groups, batch, size in ((64, 64, 1, 1, 8), (64, 130, 1, 2, 8), (32, 96, 2, 1, 16)):
            layer = _int8_layer(cin, cout, 3, groups, False)
            arrays = int8_conv_arrays(layer.weight_packed, layer.weight_scale, layer.weight_zero_point, layer.bias,
                                      cout)
            q4 = mq.quantize(nn.Sequential(nn.Conv2d(cin, cout, 3, groups=groups)), dtype="int4",
                             group_size=32).model[0]
            w4 = q4.dequantized_weight(torch.float32).numpy()
            w16 = torch.randn(cout, cin // groups, 3, 3).half().numpy()
            x = torch.randn(batch, cin, size, size).numpy()
            geometry = ((3, 3), (1, 1), (1, 1), (1, 1), groups)
            for isa in SUPPORTED:
                with at_isa(isa):
                    kept = _C.dconv2d(x, *_C.dconv_panels_int8(*arrays, cout, cin // groups, (3, 3), groups), cout,
                                      *geometry)
                    kept4 = _C.dconv2d(x, *_C.dconv_panels(w4, False, None, groups), cout, *geometry, tap_major=False)
                    for nthreads in (1, 2, 3):
                        assert np.array_equal(_C.dconv2d_int8(x, *arrays, cout, *geometry, nthreads=nthreads), kept)
                        got4 = _C.dconv2d_int4(x, q4.weight_qdata.numpy(), q4.weight_scale.numpy(),
                                               q4.weight_zero_point.numpy(), None, 32, *geometry, nthreads=nthreads)
                        assert np.array_equal(got4, kept4)
                    if isa != "scalar":  # the fp16 weight's per-call direct conv, against its kept panels
                        want = _C.dconv2d(x, *_C.dconv_panels(w16, False, None, groups), cout,
                                          *geometry, tap_major=False)
                        got = _C.h16_conv2d(x, w16, False, None, (1, 1), (1, 1), (1, 1), groups,
                                            nthreads=2, direct=True)
                        assert np.array_equal(got, want)
        assert int(_C.linear_kernels()["split_calls"]) > splits  # the calls at 2 and 3 threads did split
    finally:
        _C.dconv_own_panels_for_tests(False)


@pytest.mark.parametrize("group", [32, 128])
def test_int4_panels_filled_per_call_are_the_dequantized_weights(group):
    torch.manual_seed(0)
    for cin, cout, k, groups in ((64, 70, 3, 1), (10, 24, 3, 2), (8, 17, 1, 1)):
        conv = nn.Conv2d(cin, cout, k, padding=1, groups=groups)
        layer = mq.quantize(nn.Sequential(conv), dtype="int4", group_size=group).model[0]
        w = layer.dequantized_weight(torch.float32)
        x = torch.randn(2, cin, 7, 6).numpy()
        bias = layer.bias.detach().numpy()
        for isa in SUPPORTED:
            with at_isa(isa):
                want = _C.dconv2d(x, *_C.dconv_panels(w.numpy(), False, bias, groups), cout, (k, k), (1, 1), (1, 1),
                                  (1, 1), groups, tap_major=False)
                got = _C.dconv2d_int4(x, layer.weight_qdata.numpy(), layer.weight_scale.numpy(),
                                      layer.weight_zero_point.numpy(), bias, layer.weight_group_size or group, (k, k),
                                      (1, 1), (1, 1), (1, 1), groups, nthreads=2)
            assert np.array_equal(got, want)
        if cin != 64:
            continue
        with pytest.raises(ValueError, match="cols"):  # codes for another reduction (576 packed, 288 asked)
            _C.dconv2d_int4(x[:, : cin // 2], layer.weight_qdata.numpy(), layer.weight_scale.numpy(),
                            layer.weight_zero_point.numpy(), bias, group, (k, k), (1, 1), (1, 1), (1, 1), 1)
        with pytest.raises(ValueError, match="group"):
            _C.dconv2d_int4(x, layer.weight_qdata.numpy(), layer.weight_scale.numpy(),
                            layer.weight_zero_point.numpy(), bias, 20, (k, k), (1, 1), (1, 1), (1, 1), groups)
