"""The dynamic int8 conv's direct route on channel counts that are not a multiple of 4 (a
stem conv's 1 or 3 input channels): csrc/conv_dynamic_direct.c im2cols blocks of output rows
from the padded NHWC rows into the packed K order and runs the direct kernel on them as a 1x1
conv.  Its bits are the im2col route's (and the pure-torch twin's) at every kernel level,
thread count, threading backend, work-item split and im2col block; and a grayscale or RGB stem
of a model now takes that route (int8), where it used to run F.conv2d on the dequantized
weight."""
import os

import numpy as np
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant import _C, reference
from mono_quant.kernels import SETTINGS, THREADING_BACKENDS, dynamic_conv
from conv_calls import counting_conv_calls
from conftest import KERNELS, SUPPORTED, at_isa

EMULATED = bool(os.environ.get("MONO_QUANT_TEST_EMULATED"))  # under qemu (make test-isa): fewer large calls
CHANNELS = [1, 2, 3, 5, 7]
GEOMETRIES = [  # kernel, stride, padding, dilation
    ((3, 3), (1, 1), (1, 1), (1, 1)),  # a stem
    ((3, 3), (2, 2), (0, 0), (1, 1)),  # stride, no padding
    ((3, 1), (1, 2), (1, 0), (1, 1)),  # rectangular kernel, uneven strides
    ((3, 3), (1, 1), (2, 2), (2, 2)),  # dilation
    ((5, 5), (1, 1), (2, 2), (1, 1)),  # LeNet's stem
    ((2, 2), (1, 1), (1, 0), (1, 1)),  # k = 4 * channels: no K padding (byte copies for 1 and 3 channels)
    ((1, 1), (2, 2), (0, 0), (1, 1)),  # 1x1 stride 2
    ((7, 7), (2, 2), (3, 3), (1, 1)),  # ResNet's stem
]
GEOMETRY_IDS = ["k3", "k3s2", "k3x1", "k3d2", "k5", "k2", "k1s2", "k7s2"]


def _weights(rng, cout, k, symmetric_range=True):
    low = -127 if symmetric_range else -128
    w = rng.integers(low, 128, (cout, k), dtype=np.int8)
    packed, w_sum, has_m128 = _C.pack_int8(w)
    scale = (rng.random(cout) + 0.01).astype(np.float32)
    bias = (rng.standard_normal(cout) * 3).astype(np.float32)
    return w, packed, w_sum, has_m128, scale, bias


def _call(args, direct, isa, threads, nchw, reduce_range):
    """(y, C calls that took the direct route)."""
    previous = dynamic_conv.set_direct(direct)
    try:
        with at_isa(isa), counting_conv_calls() as counts:
            y = _C.conv2d_int8(*args, nthreads=threads, nchw=nchw, reduce_range=reduce_range)
    finally:
        dynamic_conv.set_direct(previous)
    return y, counts["direct_calls"]


def _same_bits(a, b):
    return a.shape == b.shape and np.array_equal(a.view(np.int32), b.view(np.int32))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
@pytest.mark.parametrize("channels", CHANNELS)
def test_odd_channels_direct_route_matches_im2col_route_at_every_level(channels, geometry):
    """Batches of 1 and 3 (an all-zero image among them), 17 outputs (a panel's tail), 1 and 2
    threads, NCHW and NHWC rows, symmetric and reduce_range activations, -128 weights."""
    kernel, stride, padding, dilation = geometry
    rng = np.random.default_rng(channels * 100 + GEOMETRIES.index(geometry))
    cout, k = 17, channels * kernel[0] * kernel[1]
    _, packed, w_sum, has_m128, scale, bias = _weights(rng, cout, k, symmetric_range=False)
    zp = np.zeros(cout, np.int32)
    for batch in (1, 3):
        x = rng.standard_normal((batch, channels, 9, 11)).astype(np.float32)
        if batch > 1:
            x[0] = 0
        args = (x, packed, w_sum, scale, zp, bias, cout, has_m128, kernel, stride, padding, dilation, 1)
        for reduce_range, nchw in ((False, True), (True, True), (False, False)):
            im2col, took = _call(args, False, "scalar", 1, nchw, reduce_range)
            assert took == 0
            for isa in KERNELS:
                for threads in (1, 2):
                    y, took = _call(args, True, isa, threads, nchw, reduce_range)
                    assert took == 1, (isa, threads)
                    assert _same_bits(y, im2col), (isa, threads, batch, reduce_range)
                    if isa == KERNELS[-1] and threads == 2:
                        y_im2col, _ = _call(args, False, isa, threads, nchw, reduce_range)
                        assert _same_bits(y_im2col, im2col)


def _forward_counting_calls(model, x):
    """model(x) without grad, and the dynamic conv C calls it made (kernels.dynamic_conv.profile)."""
    with counting_conv_calls() as counts, torch.no_grad():
        y = model(x)
    return y, counts


@pytest.mark.parametrize("channels,kernel", [(1, 9), (3, 5), (5, 5), (7, 5)])
def test_odd_channels_direct_route_matches_the_torch_twin(channels, kernel):
    """Reductions of DYNAMIC_MIN_K (64) and more (a shorter one keeps F.conv2d, below)."""
    torch.manual_seed(channels)
    conv = nn.Conv2d(channels, 24, kernel, stride=1, padding=kernel // 2).eval()
    qconv = mq.quantize(conv).model
    x = torch.randn(2, channels, 10, 7)
    for reduce_range in (False, True):
        qconv.set_reduce_range(reduce_range)
        ref = reference.conv2d_int8(x, qconv.quantized_weight().qdata, qconv.weight_scale, qconv.weight_zero_point,
                                    qconv.bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                                    reduce_range=reduce_range)
        assert qconv._packed_pays(x)
        for isa in SUPPORTED:
            with at_isa(isa):
                y, counts = _forward_counting_calls(qconv, x)
            assert counts["direct_calls"] == 1
            assert torch.equal(y, ref), isa


@pytest.mark.parametrize("case", [
    (1, 16, (3, 3), 300, 301, (1, 5)),  # a wide image: im2col blocks of 9 output rows
    (7, 32, (3, 3), 20, 1100, (1, 2)),  # a row wider than a block: one output row per block
    (3, 64, (3, 3), 128, 128, (1, 2, 5)),  # 2^24 multiply-adds and more: two threads, row blocks (batch 1, 2)
    # and whole images (5)
], ids=["wide", "wider-than-a-block", "threads"])
def test_odd_channels_work_items_and_blocks_give_one_threads_bits(case):
    """Calls large enough for two threads (2^24 multiply-adds): items of output rows or whole
    images, im2col blocks of several rows or of one; every threading backend and thread count
    gives the one-thread bits."""
    channels, cout, kernel, height, width, batches = case
    rng = np.random.default_rng(height)
    _, packed, w_sum, has_m128, scale, bias = _weights(rng, cout, channels * kernel[0] * kernel[1])
    zp = np.zeros(cout, np.int32)
    for batch in batches[:1] if EMULATED else batches:
        x = rng.standard_normal((batch, channels, height, width)).astype(np.float32)
        args = (x, packed, w_sum, scale, zp, bias, cout, has_m128, kernel, (1, 1), (1, 1), (1, 1), 1)
        for isa in (SUPPORTED[0], SUPPORTED[-1]):
            one, took = _call(args, True, isa, 1, True, False)
            assert took == 1
            im2col, _ = _call(args, False, isa, 1, True, False)
            assert _same_bits(one, im2col)
            previous = SETTINGS.threading_backend
            try:
                for backend in THREADING_BACKENDS:
                    SETTINGS.set_threading_backend(backend)
                    two, _ = _call(args, True, isa, 2, True, False)
                    assert _same_bits(two, one), (isa, backend, batch)
            finally:
                SETTINGS.set_threading_backend(previous)


def _stem_model(in_channels):
    """A stem conv (no bias, as ResNet8's) and a 16-channel conv after it."""
    torch.manual_seed(in_channels)
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(16, 32, 1, 2, 0)).eval()  # a 1x1 stride-2 shortcut's shape: K = 16


def _rgb_stem_model():
    """ResNet-18's stem shape (3 -> 16 here, 7x7 stride 2, K = 147) and a 3x3 conv after it."""
    torch.manual_seed(7)
    return nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.ReLU(), nn.Conv2d(16, 24, 3, 1, 1)).eval()


def test_an_rgb_stem_takes_the_direct_route_in_int8():
    """A 7x7 RGB stem (3 channels: not a multiple of 4) runs by the direct route, one C call
    per conv, the int8 twin's numbers, at batch 1 and 16; before the route took any channel
    count it went through the im2col route."""
    qmodel = mq.quantize(_rgb_stem_model(), dtype="int8").model
    stem, second = qmodel[0], qmodel[2]
    for batch in (1, 16):
        x = torch.randn(batch, 3, 32, 32)
        assert stem._packed_pays(x)
        y, counts = _forward_counting_calls(qmodel, x)
        assert counts["calls"] == 2 and counts["direct_calls"] == 2
        with torch.no_grad():
            h = reference.conv2d_int8(x, stem.quantized_weight().qdata, stem.weight_scale, stem.weight_zero_point,
                                      None, (2, 2), (3, 3), (1, 1), 1)
            ref = reference.conv2d_int8(torch.relu(h), second.quantized_weight().qdata, second.weight_scale,
                                        second.weight_zero_point, second.bias, (1, 1), (1, 1), (1, 1), 1)
        assert torch.equal(y, ref)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_short_reductions_keep_f_conv2d(in_channels):
    """A 3x3 stem of 1 or 3 channels (K = 9 / 27) and a 16-channel 1x1 shortcut (K = 16) stay on
    F.conv2d on the dequantized weight (DYNAMIC_MIN_K): int8 did not pay there (ResNet8 at batch
    64: 0.68 of fp32's time with them in int8, 0.56 without; docs/benchmarks.md).  The grayscale
    stem is packed all the same (a file keeps it for the day the rule changes)."""
    model = _stem_model(in_channels)
    qmodel = mq.quantize(model, dtype="int8").model
    stem, shortcut = qmodel[0], qmodel[2]
    assert stem.weight_packed is not None
    x = torch.randn(2, in_channels, 28, 28)
    assert not stem._packed_pays(x) and not shortcut._packed_pays(torch.relu(stem(x)))
    y, counts = _forward_counting_calls(qmodel, x)
    assert counts["calls"] == 0
    with torch.no_grad():
        float_y = model(x)
    assert torch.allclose(y, float_y, atol=0.05 * float(float_y.abs().max()))



@pytest.mark.parametrize("in_channels,out_channels,int8", [(64, 64, False), (127, 64, False), (128, 64, True),
                                                          (192, 47, False), (192, 48, True)])
def test_pointwise_convs_need_128_inputs_and_48_outputs_for_int8(in_channels, out_channels, int8):
    """A 1x1 conv runs int8 from DYNAMIC_MIN_K_POINTWISE (128) input and DYNAMIC_MIN_N_POINTWISE (48)
    output channels per group: below them F.conv2d on the dequantized weight (no C call, fp32's
    numbers), which beat the int8 route on MobileNet-style shapes (docs/benchmarks.md); a 3x3 conv
    of 8 channels (k = 72) to 16 stays int8."""
    torch.manual_seed(in_channels)
    conv = nn.Conv2d(in_channels, out_channels, 1).eval()
    qconv = mq.quantize(conv).model
    x = torch.randn(1, in_channels, 20, 20)
    assert qconv._packed_pays(x) is int8
    y, counts = _forward_counting_calls(qconv, x)
    assert (counts["calls"] > 0) is int8
    with torch.no_grad():
        assert torch.allclose(y, conv(x), atol=0.05 * float(conv(x).abs().max()))
    small = mq.quantize(nn.Conv2d(8, 16, 3, padding=1).eval()).model
    assert small._packed_pays(torch.randn(1, 8, 56, 56))

def test_stem_route_is_int8_unless_switched_off_or_asymmetric():
    """Switched off (the routes before the direct one) the 7x7 RGB stem takes the im2col route
    (same bits); asymmetric weights never take the direct route (its rule); a depthwise conv
    (one input channel per group) stays unpacked."""
    qmodel = mq.quantize(_rgb_stem_model(), dtype="int8").model
    stem = qmodel[0]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        int8 = stem(x)
        previous = dynamic_conv.set_direct(False)
        try:
            im2col, counts = _forward_counting_calls(stem, x)
        finally:
            dynamic_conv.set_direct(previous)
        assert counts["direct_calls"] == 0
        assert torch.equal(im2col, int8) and torch.equal(stem(x), int8)
    asymmetric = mq.quantize(_rgb_stem_model(), dtype="int8", symmetric=False).model[0]
    assert not dynamic_conv.direct_applies(3, 1, (7, 7), (3, 3), (1, 1), True)
    with torch.no_grad():
        assert torch.allclose(asymmetric(x), int8, atol=0.05 * float(int8.abs().max()))
    depthwise = mq.quantize(nn.Conv2d(8, 8, 3, groups=8), dtype="int8").model
    assert "weight_packed" not in depthwise._buffers


def test_packed_grayscale_stem_saves_and_loads(tmp_path):
    model = _stem_model(1)
    qmodel = mq.quantize(model, dtype="int8").model
    path = tmp_path / "stem.mq.safetensors"
    mq.save(qmodel, path)
    loaded = mq.load(path, model=_stem_model(1))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))
    assert "weight_packed" in loaded[0]._buffers


def test_stem_traced_forward_matches_eager():
    """The torch.library ops' forward (graph capture, autograd) takes the same route rule."""
    from mono_quant.formats import traced_forward

    qmodel = mq.quantize(_rgb_stem_model(), dtype="int8").model
    stem = qmodel[0]
    x = torch.randn(2, 3, 16, 16)
    assert stem._packed_pays(x)
    with torch.no_grad():
        eager = stem(x)
        traced = traced_forward.conv2d_forward(stem, x)
    assert torch.equal(eager, traced)


def test_a_string_padding_stem_keeps_torch_and_its_rule_does_not_fail():
    """padding="same": no packed kernel takes it (F.conv2d on the dequantized weight); the size
    rule, asked directly, answers instead of failing on the string."""
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 16, 3, padding="same").eval()
    qconv = mq.quantize(conv).model
    x = torch.randn(2, 3, 8, 8)
    assert qconv._packed_pays(x) is False
    with torch.no_grad():
        y = qconv(x)
    assert torch.allclose(y, qconv.conv_with(x, qconv.dequantized_weight(), qconv.bias), rtol=1e-5, atol=1e-6)
