"""The dynamic int8 conv's direct route (csrc/conv_dynamic_direct.c: the static path's direct
conv kernel, one parallel region) against its im2col route and the pure-torch twin: the same
bits at every kernel level, at 1 and 2 threads, in whole-image and row-block work items."""
import numpy as np
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant import reference
from mono_quant.kernels import dynamic_conv
from mono_quant.modules.linear import kernel_args
from conv_calls import counting_conv_calls
from conftest import KERNELS, SUPPORTED, at_isa

CASES = [  # in, out, kernel, stride, padding, dilation, groups
    (4, 8, 3, 1, 1, 1, 1),
    (8, 20, 3, 2, 1, 1, 1),  # stride 2
    (8, 12, (3, 1), (1, 2), (0, 1), 1, 1),  # rectangular kernel, uneven strides
    (12, 18, 3, 1, 2, 2, 1),  # dilation 2
    (16, 24, 1, 1, 0, 1, 1),  # 1x1
    (16, 16, 1, 2, 0, 1, 1),  # 1x1 stride 2
    (32, 5, 5, 1, 2, 1, 1),  # fewer outputs than a panel
    (4, 33, 3, 1, 0, 1, 1),  # a panel's tail, no padding
    (2, 16, 3, 1, 1, 1, 1),  # channels not a multiple of 4: im2col blocks inside the direct route
    (6, 7, 3, 2, 0, 1, 1),
    (12, 18, 3, 1, 2, 2, 3),  # groups: im2col route only
]
IDS = [str(c) for c in CASES]


def _takes_direct(case, symmetric):
    cin, _, _, _, _, _, groups = case
    return symmetric and groups == 1


def _quantized(case, seed, symmetric=True, bias=True):
    cin, cout, k, s, p, d, g = case
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape))
    return conv, mq.quantize(conv, symmetric=symmetric).model


def _bits(t):
    return t.contiguous().view(torch.int32)


def _run(qconv, x, threads, direct):
    """The layer's packed C call (the route rule's size limits aside) on one route; (y, C calls
    that took the direct route)."""
    previous_threads, previous_direct = torch.get_num_threads(), dynamic_conv.set_direct(direct)
    torch.set_num_threads(threads)
    try:
        with counting_conv_calls() as counts, torch.no_grad():
            y = qconv._packed_conv(x, *kernel_args(qconv))
    finally:
        torch.set_num_threads(previous_threads)
        dynamic_conv.set_direct(previous_direct)
    return y, counts["direct_calls"]


def _inputs(cin, batch, size=(9, 10)):
    """A batch with an all-zero image, and (batch > 1) a strided, non-contiguous view."""
    torch.manual_seed(batch)
    x = torch.randn(batch, cin, size[0], 2 * size[1])[..., ::2]
    assert not x.is_contiguous()
    x[0] = 0
    return x


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("isa", KERNELS)
def test_direct_route_matches_im2col_route_and_reference(case, isa):
    for symmetric, reduce_range, bias in ((True, False, True), (True, True, False), (False, False, True)):
        conv, qconv = _quantized(case, 3, symmetric, bias)
        qconv.set_reduce_range(reduce_range)
        for batch in (1, 3):
            x = _inputs(case[0], batch)
            with at_isa(isa):
                results = [_run(qconv, x, threads, direct) for direct in (True, False) for threads in (1, 2)]
            im2col = results[2][0]
            ref = reference.conv2d_int8(x, qconv.quantized_weight().qdata, qconv.weight_scale,
                                        qconv.weight_zero_point, qconv.bias, conv.stride, conv.padding,
                                        conv.dilation, conv.groups, reduce_range=reduce_range)
            assert torch.equal(im2col, ref)
            for y, _ in results:
                assert torch.equal(_bits(y), _bits(im2col))
            took = results[0][1]
            assert took == (1 if _takes_direct(case, symmetric) else 0)
            assert results[2][1] == 0  # switched off



WIDE = [  # (case, image size): the NCHW -> NHWC byte transpose's 16 x 16 tiles and their tails
    ((16, 24, 1, 1, 0, 1, 1), (6, 37)),   # 1x1: the whole plane (222 pixels) transposed at once
    ((33, 16, 3, 1, 1, 1, 1), (5, 35)),   # padded rows: 2 tiles + 3 pixels, 2 x 16 + 1 channels
    ((48, 20, 1, 2, 0, 1, 1), (4, 16)),   # exactly whole tiles
    ((17, 8, 3, 1, 0, 1, 1), (3, 18)),    # one tile of channels + 1, one of pixels + 2
]


@pytest.mark.parametrize("case,size", WIDE, ids=[str(c) for c in WIDE])
@pytest.mark.parametrize("isa", SUPPORTED)
def test_wide_images_match_the_im2col_route_and_reference(case, size, isa):
    conv, qconv = _quantized(case, 4)
    x = _inputs(case[0], 2, size)
    with at_isa(isa):
        (direct, took), (im2col, _) = _run(qconv, x, 1, True), _run(qconv, x, 1, False)
    ref = reference.conv2d_int8(x, qconv.quantized_weight().qdata, qconv.weight_scale, qconv.weight_zero_point,
                                qconv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    assert took == 1 and torch.equal(im2col, ref) and torch.equal(_bits(direct), _bits(im2col))

@pytest.mark.parametrize("isa", SUPPORTED)
def test_direct_route_nan_image_gives_nan_outputs_as_the_im2col_route(isa):
    conv, qconv = _quantized((8, 20, 3, 2, 1, 1, 1), 5)
    x = _inputs(8, 3)
    x[1, 2, 3, 4] = float("nan")
    x[2, 0, 0, 0] = float("inf")
    with at_isa(isa):
        direct, took = _run(qconv, x, 2, True)
        im2col, _ = _run(qconv, x, 2, False)
    assert took == 1
    assert torch.equal(_bits(direct), _bits(im2col))
    assert torch.isnan(direct[1:]).all() and not torch.isnan(direct[0]).any()


@pytest.mark.parametrize("isa", SUPPORTED)
@pytest.mark.parametrize("batch", [1, 3, 5])
def test_direct_route_row_blocks_at_two_threads(isa, batch):
    """Calls large enough for two threads (2^24 multiply-adds and more): fewer images than twice
    the threads are cut into blocks of output rows after a first region quantizes them; more
    go whole to each thread.  Both give the one-thread bits."""
    conv, qconv = _quantized((64, 64, 3, 1, 1, 1, 1), 7)
    torch.manual_seed(batch)
    x = torch.randn(batch, 64, 31, 33)
    with at_isa(isa):
        one, _ = _run(qconv, x, 1, True)
        two, took = _run(qconv, x, 2, True)
        im2col, _ = _run(qconv, x, 2, False)
    assert took == 1
    assert torch.equal(_bits(one), _bits(two)) and torch.equal(_bits(one), _bits(im2col))


def test_direct_route_rows_output_matches_nchw():
    """nchw=False: the NHWC rows (the kernel writes them in place, the epilogue scales them)."""
    from mono_quant.kernels.int8 import conv2d_int8_raw

    conv, qconv = _quantized((8, 20, 3, 2, 1, 1, 1), 11)
    x = torch.randn(3, 8, 9, 10)
    _, _, whole = kernel_args(qconv)
    geometry = ((3, 3), (2, 2), (1, 1), (1, 1), 1)
    for threads in (1, 2):
        rows = conv2d_int8_raw(x.numpy(), whole, geometry, nchw=False)
        nchw = conv2d_int8_raw(x.numpy(), whole, geometry, nchw=True)
        previous = dynamic_conv.set_direct(False)
        try:
            rows_im2col = conv2d_int8_raw(x.numpy(), whole, geometry, nchw=False)
        finally:
            dynamic_conv.set_direct(previous)
        assert np.array_equal(rows.view(np.int32), rows_im2col.view(np.int32))
        assert np.array_equal(nchw, rows.reshape(3, 5, 5, 20).transpose(0, 3, 1, 2))


def test_module_forward_takes_one_call_and_follows_reduce_range(one_torch_thread):
    """The eager forward's kept call (a float32 input of a dynamic layer) gives _packed_conv's
    bits, reads reduce_range per call, and sends a large batch to C in one call."""
    conv, qconv = _quantized((16, 24, 3, 1, 1, 1, 1), 13)
    x = torch.randn(70, 16, 12, 12)  # 70 images of 144 x 144 im2col bytes: chunks on the im2col route
    with torch.no_grad():
        for reduce_range in (False, True, False):
            qconv.set_reduce_range(reduce_range)
            with counting_conv_calls() as counts:
                y = qconv(x)
            assert counts["calls"] == 1 and counts["direct_calls"] == 1
            assert torch.equal(y, qconv._packed_conv(x, *kernel_args(qconv)))
            ref = reference.conv2d_int8(x, qconv.quantized_weight().qdata, qconv.weight_scale,
                                        qconv.weight_zero_point, qconv.bias, conv.stride, conv.padding,
                                        conv.dilation, conv.groups, reduce_range=reduce_range)
            assert torch.equal(y, ref)


def test_direct_applies_rule():
    zero, nonzero, pad, dil = False, True, (1, 1), (1, 1)
    assert dynamic_conv.direct_applies(16, 1, (3, 3), pad, dil, zero)
    assert not dynamic_conv.direct_applies(16, 1, (3, 3), pad, dil, nonzero)  # weight zero-points
    assert not dynamic_conv.direct_applies(16, 2, (3, 3), pad, dil, zero)  # groups
    assert dynamic_conv.direct_applies(6, 1, (3, 3), pad, dil, zero)  # any channel count (im2col blocks)
    assert dynamic_conv.direct_applies(1, 1, (3, 3), pad, dil, zero)  # a grayscale stem
    assert not dynamic_conv.direct_applies(4096, 1, (3, 3), pad, dil, zero)  # reduction over 32768
    assert dynamic_conv.direct_applies(16, 1, (3, 3), (2, 4), (1, 2), zero)  # padding a tap can reach
    assert dynamic_conv.direct_applies(16, 1, (3, 1), (1, 1), dil, zero)  # a few more: cheap
    assert not dynamic_conv.direct_applies(16, 1, (3, 3), (7, 1), dil, zero)  # far wider: the copy grows
    assert not dynamic_conv.direct_applies(16, 1, (1, 1), (0, 5), dil, zero)
    previous = dynamic_conv.set_direct(False)
    try:
        assert not dynamic_conv.direct_applies(16, 1, (3, 3), pad, dil, zero)
    finally:
        assert dynamic_conv.set_direct(previous) is False


def test_profile_is_off_by_default_and_zeroes_on_read():
    conv, qconv = _quantized((8, 20, 3, 2, 1, 1, 1), 17)
    x = torch.randn(2, 8, 9, 10)
    dynamic_conv.profile(False)
    with torch.no_grad():
        qconv._packed_conv(x, *kernel_args(qconv))
    assert all(v == 0 for v in dynamic_conv.profile().values())
    dynamic_conv.profile(True)
    try:
        with torch.no_grad():
            qconv._packed_conv(x, *kernel_args(qconv))
        first = dynamic_conv.profile()
        second = dynamic_conv.profile()
    finally:
        dynamic_conv.profile(False)
    assert first["calls"] == 1 and first["direct_calls"] == 1 and first["total"] > 0
    assert all(v == 0 for v in second.values())


# ---- properties (hypothesis): the route's entry points, on drawn shapes and values ------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from mono_quant import _C  # noqa: E402


@st.composite
def direct_cases(draw):
    cin, cout = draw(st.integers(1, 12)), draw(st.integers(1, 37))  # any channel count (im2col blocks)
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    batch, height, width = draw(st.integers(0, 3)), draw(st.integers(0, 9)), draw(st.integers(0, 9))
    return cin, cout, kernel, stride, padding, dilation, batch, height, width


@settings(max_examples=60, deadline=None)
@given(direct_cases(), st.integers(0, 2**32 - 1), st.sampled_from(SUPPORTED), st.sampled_from([1, 2]),
       st.booleans(), st.booleans(), st.sampled_from([1.0, 1e-3, 100.0, 1e30, 1e-40]))
def test_direct_route_property(case, seed, isa, threads, reduce_range, nchw, magnitude):
    """Drawn shapes (only padding, empty batches, -128 weights, specials in x): the direct route's
    bits are the im2col route's, and either both raise or neither does."""
    cin, cout, kernel, stride, padding, dilation, batch, height, width = case
    rng = np.random.default_rng(seed)
    k = cin * kernel[0] * kernel[1]
    w = rng.integers(-128, 128, (cout, k), dtype=np.int8)
    packed, w_sum, has_m128 = _C.pack_int8(w)
    scale = (rng.random(cout) + 0.01).astype(np.float32)
    zp = np.zeros(cout, np.int32)
    bias = (rng.standard_normal(cout) * 3).astype(np.float32) if rng.random() < 0.5 else None
    x = (rng.standard_normal((batch, cin, height, width)) * magnitude).astype(np.float32)
    if x.size and rng.random() < 0.3:
        x.reshape(-1)[rng.integers(x.size)] = rng.choice([np.nan, np.inf, 0.0, 3.4e38])
    args = (x, packed, w_sum, scale, zp, bias, cout, has_m128, kernel, stride, padding, dilation, 1)

    def call(direct):
        previous = dynamic_conv.set_direct(direct)
        try:
            with at_isa(isa):
                return _C.conv2d_int8(*args, nthreads=threads, nchw=nchw, reduce_range=reduce_range)
        except (ValueError, OverflowError) as error:
            return type(error)
        finally:
            dynamic_conv.set_direct(previous)

    direct, im2col = call(True), call(False)
    if isinstance(im2col, type):
        assert direct is im2col
        return
    assert direct.shape == im2col.shape and np.array_equal(direct.view(np.int32), im2col.view(np.int32))


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["channels", "groups", "kernel", "arity", "profile_kw"]), st.data())
def test_route_entry_points_bad_arguments(broken, data):
    args = [16, 1, 3, 3, 1, 1, 1, 1, False]
    if broken == "arity":
        call = lambda: _C.conv2d_int8_direct_applies(*args[:8])  # noqa: E731
    elif broken == "profile_kw":
        call = lambda: _C.conv_profile(enabled=True)  # noqa: E731
    else:
        where = {"channels": 0, "groups": 1, "kernel": 2}[broken]
        args[where] = data.draw(st.sampled_from(["16", None, 2.5, 2**70]))
        call = lambda: _C.conv2d_int8_direct_applies(*args)  # noqa: E731
    with pytest.raises((TypeError, OverflowError)) as info:
        call()
    assert str(info.value)


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([4, 8, 3640, 3641, 3644, 8192, 32768])),
       st.integers(-5, 5), st.integers(-5, 5), st.integers(-5, 5),
       st.tuples(st.integers(-1, 16), st.integers(-1, 16)), st.tuples(st.integers(1, 3), st.integers(1, 3)))
def test_direct_applies_never_fails_on_odd_sizes(channels, groups, kh, kw, padding, dilation):
    """Zero, negative and huge sizes: a plain False (the route's rule is asked before any check);
    the Python twin (the one torch.compile traces) answers as C does."""
    (ph, pw), (dh, dw) = padding, dilation
    for has_zp in (False, True):
        got = _C.conv2d_int8_direct_applies(channels, groups, kh, kw, ph, pw, dh, dw, has_zp)
        assert got is (not has_zp and groups == 1 and 0 < channels and kh > 0 and kw > 0
                       and channels * kh * kw <= 32768 and 0 <= ph <= (kh - 1) * dh + 4 and 0 <= pw <= (kw - 1) * dw + 4)
        assert dynamic_conv.direct_applies(channels, groups, (kh, kw), padding, dilation, has_zp) is got


_EDGE_CHANNELS = [0, 1, 3, 3640, 3641, 32768, 32769, 2**40]
_EDGE_KERNEL = [-1, 0, 1, 3, 2**20, 2**20 + 1]
_EDGE_PADDING = [-1, 0, 4, 5, 2**20 - 1, 2**20, 2**20 + 1, 2**62]
_EDGE_DILATION = [-1, 0, 1, 2**19 + 1, 2**20, 2**20 + 1]


@pytest.mark.parametrize("axis", ["h", "w"])
def test_direct_applies_twin_agrees_on_edge_sizes(isa, axis):
    """The Python twin and the C rule on the edges of every bound: zero and negative sizes,
    the reduction cap (32768), padding one past what a tap reaches, and the bindings' 2^20 cap
    on kernel, padding and dilation (a pad of 2^20 + 1 with a dilation of 2^19 + 1 is within
    reach of a 3-tap kernel but past the cap: C says False, and so must the twin)."""
    disagree = []
    for channels in _EDGE_CHANNELS:
        for k in _EDGE_KERNEL:
            for pad in _EDGE_PADDING + [2 * (2**19 + 1) + 4]:
                for dil in _EDGE_DILATION:
                    kernel, padding, dilation = ((k, 3), (pad, 1), (dil, 1)) if axis == "h" else \
                        ((3, k), (1, pad), (1, dil))
                    for kernel_size in (kernel, (3, 3)):
                        args = (channels, 1, *kernel_size, *padding, *dilation, False)
                        c_rule = _C.conv2d_int8_direct_applies(*args)
                        twin = dynamic_conv.direct_applies(channels, 1, kernel_size, padding, dilation, False)
                        if twin is not c_rule:
                            disagree.append((args, c_rule))
    assert disagree == []
    # the edges are really met: each answer occurs, and the 2^20 caps decide some of them
    assert dynamic_conv.direct_applies(1, 1, (3, 3), (2**20, 1), (2**19 + 1, 1), False)
    assert not dynamic_conv.direct_applies(1, 1, (3, 3), (2**20 + 1, 1), (2**19 + 1, 1), False)
    assert not dynamic_conv.direct_applies(1, 1, (1, 3), (4, 1), (2**20 + 1, 1), False)
    assert not dynamic_conv.direct_applies(1, 1, (1, 3), (0, 1), (0, 1), False)


def test_direct_route_size_floor():
    """A layer the direct route takes runs packed from DIRECT_MIN_MACS_PER_IMAGE multiply-adds per
    image (16->16 on 8x8: 147k, under the im2col route's floor); switched off, the im2col
    route's floor again (the kept route follows the switch)."""
    from mono_quant.modules import conv as conv_module

    conv, qconv = _quantized((16, 16, 3, 1, 1, 1, 1), 19)
    small, tiny = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 2, 2)  # 147k and 9k per image
    assert conv_module.DIRECT_MIN_MACS_PER_IMAGE <= 147456 < conv_module.DYNAMIC_MIN_MACS_PER_IMAGE
    assert qconv._packed_pays(small) and not qconv._packed_pays(tiny)
    with torch.no_grad():
        packed = qconv(small)
        assert torch.equal(packed, qconv._packed_conv(small, *kernel_args(qconv)))
        previous = dynamic_conv.set_direct(False)
        try:
            assert not qconv._packed_pays(small)
            float_route = qconv(small)
        finally:
            dynamic_conv.set_direct(previous)
        assert not torch.equal(float_route, packed)
        assert torch.allclose(float_route, packed, atol=0.05 * float(packed.abs().max()))
        assert torch.equal(qconv(small), packed)


def test_padding_wider_than_the_kernel_reaches_takes_the_im2col_route():
    """The direct route copies each image padded: padding 12000 on a 1x1 image with stride 24000
    made a 2 GB copy for a 2x2 output (and MemoryError at 500000); such convs keep the im2col
    route, which reads padding as zeros. Same numbers as the reference."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 16, 1, stride=24000, padding=12000)
    qconv = mq.quantize(conv, dtype="int8").model
    x = torch.randn(1, 4, 1, 1)
    counts = dynamic_conv.profile(True)
    try:
        dynamic_conv.profile()
        y = qconv(x)
        counts = dynamic_conv.profile()
    finally:
        dynamic_conv.profile(False)
    assert y.shape == conv(x).shape == (1, 16, 2, 2)
    assert counts["direct_calls"] == 0
    ref = reference.conv2d_int8(x, qconv.quantized_weight().qdata, qconv.weight_scale, qconv.weight_zero_point,
                                qconv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    assert torch.equal(y, ref)


@pytest.mark.parametrize("reduce_range", [False, True])
def test_a_caller_given_w_sum_at_the_int32_limit_is_no_undefined_behaviour(reduce_range):
    """w_sum comes from the caller; 128 * w_sum was int arithmetic (signed overflow, which the
    sanitizer build of this file reports). Any value only gives some numbers, never UB."""
    from mono_quant import _C
    cout, cin = 4, 16
    packed, w_sum, m128 = _C.pack_int8(np.ones((cout, cin * 9), np.int8))
    w_sum = np.full_like(w_sum, 2**31 - 1)
    x = np.ones((1, cin, 4, 4), np.float32)
    y = _C.conv2d_int8(x, packed, w_sum, np.ones(cout, np.float32), np.zeros(cout, np.int32), None, cout, m128,
                       (3, 3), (1, 1), (1, 1), (1, 1), 1, nthreads=1, nchw=True, reduce_range=reduce_range)
    assert y.shape == (1, cout, 4, 4)


ONE_D = [  # in, out, kernel, stride, padding, dilation: height-1 images (a Conv1d's), which run standing up
    (8, 20, (1, 3), 1, (0, 1), 1),
    (8, 12, (1, 5), (2, 3), (0, 2), (1, 2)),  # (the height's stride: no effect on one row)
    (2, 16, (1, 4), 1, 0, 1),  # channels not a multiple of 4: im2col blocks
    (1, 9, (1, 9), (1, 4), (0, 3), 1),  # one input channel (a waveform)
]


@pytest.mark.parametrize("case", ONE_D, ids=[str(c) for c in ONE_D])
@pytest.mark.parametrize("isa", SUPPORTED)
def test_height_1_images_match_the_im2col_route_and_reference(case, isa):
    """A Conv1d's height-1 image runs standing up in C (kernel (k, 1) on the width-1 image of the
    same bytes): the same bits as the im2col route and the reference, in rows and NCHW."""
    from mono_quant.kernels.int8 import conv2d_int8_raw

    cin, cout, k, s, p, d = case
    conv, qconv = _quantized((cin, cout, k, s, p, d, 1), 19)
    for batch, length in ((1, 37), (3, 16)):
        torch.manual_seed(batch)
        x = torch.randn(batch, cin, 1, length)
        x[-1] = 0
        with at_isa(isa):
            results = [_run(qconv, x, threads, direct) for direct in (True, False) for threads in (1, 2)]
            _, _, whole = kernel_args(qconv)
            geometry = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, 1)
            rows = conv2d_int8_raw(x.numpy(), whole, geometry, nchw=False)
        ref = reference.conv2d_int8(x, qconv.quantized_weight().qdata, qconv.weight_scale, qconv.weight_zero_point,
                                    qconv.bias, conv.stride, conv.padding, conv.dilation, 1)
        assert torch.equal(results[2][0], ref) and results[0][1] == 1
        for y, _ in results:
            assert torch.equal(_bits(y), _bits(ref))
        assert np.array_equal(rows.reshape(batch, 1, -1, cout).transpose(0, 3, 1, 2), ref.numpy())


@pytest.mark.parametrize("isa", SUPPORTED)
def test_a_batch_1_sequence_is_cut_into_row_blocks_at_two_threads(isa):
    """A call large enough for two threads on one height-1 image (a Conv1d at batch 1): standing
    up it has an output row per pixel, so it is cut into row blocks; the one-thread bits."""
    conv, qconv = _quantized((64, 64, (1, 3), 1, (0, 1), 1, 1), 23)
    x = torch.randn(1, 64, 1, 2048)  # 2048 x 576 x 64 multiply-adds: past the two-thread floor
    with at_isa(isa):
        one, _ = _run(qconv, x, 1, True)
        two, took = _run(qconv, x, 2, True)
        im2col, _ = _run(qconv, x, 1, False)
    assert took == 1
    assert torch.equal(_bits(one), _bits(two)) and torch.equal(_bits(one), _bits(im2col))
