"""Property tests of ``_C.h16_conv2d`` (the fp16 / bf16 weight Conv2d), in the manner of
test_fp16_properties.py: hypothesis draws the geometry (batch 0 included, groups, kernel,
stride, padding, dilation, images down to one pixel), weight encodings (float16, bf16 bits
as int16 / uint16), input layouts (channels-last, sliced), values with specials, the kernel
level, the thread count and the algorithm (im2col GEMM or direct).  A valid call agrees
with torch's float64 conv of the widened weight to float32 rounding (NaN and Inf where they
are); an invalid one raises a clear error; a huge padding is refused, never wrapped."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mono_quant import _C
from conftest import SUPPORTED, at_isa
from half_conv_specials import check_specials, draw_conv_operands
from test_fp16_properties import ENCODINGS

SETTINGS = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def x_layout(a, name):
    if name == "channels_last":
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if name == "width_slice":
        return np.repeat(a, 2, axis=3)[..., ::2]
    return a


@SETTINGS
@given(data=st.data(), encoding=st.sampled_from(ENCODINGS), isa=st.sampled_from(SUPPORTED),
       nthreads=st.sampled_from([1, 2, 3]))
def test_h16_conv2d_matches_the_widened_conv(data, encoding, isa, nthreads):
    draw = data.draw
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 6)), groups * draw(st.integers(1, 5))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    height = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]) + draw(st.integers(0, 9))
    width = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]) + draw(st.integers(0, 9))
    batch = draw(st.integers(0, 3))
    x, w_bits, w, is_bf16, bias = draw_conv_operands(draw, encoding, (batch, cin, height, width),
                                                     (cout, cin // groups, kh, kw))
    xa = x_layout(x, draw(st.sampled_from(["contiguous", "channels_last", "width_slice"])))
    direct = draw(st.booleans())  # the im2col GEMM or the direct kernel (h16_dconv.c)
    with at_isa(isa):
        y = _C.h16_conv2d(xa, w_bits, is_bf16, bias, stride, padding, dilation, groups, nthreads=nthreads,
                          direct=direct)
    xd, wd = torch.from_numpy(x).double(), w.double()
    bd = None if bias is None else torch.from_numpy(bias).double()
    exact = F.conv2d(xd, wd, bd, stride, padding, dilation, groups)
    got, fine = check_specials(y, exact)
    mag = F.conv2d(xd.abs(), wd.abs(), None if bd is None else bd.abs(), stride, padding, dilation, groups)
    bound = (cin // groups * kh * kw + 2) * 2.0 ** -24 * mag
    assert bool(((got - exact).abs()[fine] <= bound[fine]).all())


@SETTINGS
@given(data=st.data())
def test_h16_conv2d_rejects_bad_arguments_clearly(data):
    x = np.zeros((1, 4, 5, 5), np.float32)
    w = np.zeros((6, 2, 3, 3), np.float16)
    ok = ((1, 1), (1, 1), (1, 1), 2)
    bad = data.draw(st.sampled_from(["x64", "x3d", "wf32", "w2d", "channels", "groups0", "groups_out", "bias_len",
                                     "bias_f64", "bf16_f16", "big_endian", "threads", "not_array", "stride0",
                                     "pad_neg", "pad_huge", "dil0", "pair", "too_small", "huge_padding"]))
    calls = {
        "x64": lambda: _C.h16_conv2d(x.astype(np.float64), w, False, None, *ok),
        "x3d": lambda: _C.h16_conv2d(x[0], w, False, None, *ok),
        "wf32": lambda: _C.h16_conv2d(x, w.astype(np.float32), False, None, *ok),
        "w2d": lambda: _C.h16_conv2d(x, w.reshape(6, -1), False, None, *ok),
        "channels": lambda: _C.h16_conv2d(x, w, False, None, *ok[:3], 1),
        "groups0": lambda: _C.h16_conv2d(x, w, False, None, *ok[:3], 0),
        "groups_out": lambda: _C.h16_conv2d(x, w[:5], False, None, *ok),
        "bias_len": lambda: _C.h16_conv2d(x, w, False, np.zeros(5, np.float32), *ok),
        "bias_f64": lambda: _C.h16_conv2d(x, w, False, np.zeros(6), *ok),
        "bf16_f16": lambda: _C.h16_conv2d(x, w, True, None, *ok),
        "big_endian": lambda: _C.h16_conv2d(x.astype(">f4"), w, False, None, *ok),
        "threads": lambda: _C.h16_conv2d(x, w, False, None, *ok, nthreads=data.draw(st.sampled_from([0, -1, 5000]))),
        "not_array": lambda: _C.h16_conv2d(x.tolist(), w, False, None, *ok),
        "stride0": lambda: _C.h16_conv2d(x, w, False, None, (1, 0), (1, 1), (1, 1), 2),
        "pad_neg": lambda: _C.h16_conv2d(x, w, False, None, (1, 1), (-1, 1), (1, 1), 2),
        "pad_huge": lambda: _C.h16_conv2d(x, w, False, None, (1, 1), (1, 1 << 40), (1, 1), 2),
        "dil0": lambda: _C.h16_conv2d(x, w, False, None, (1, 1), (1, 1), (0, 1), 2),
        "pair": lambda: _C.h16_conv2d(x, w, False, None, [1, 1], (1, 1), (1, 1), 2),
        "too_small": lambda: _C.h16_conv2d(x, w, False, None, (1, 1), (0, 0), (3, 3), 2),
        # about 4e12 output pixels: refused (MemoryError / OverflowError), never a wrapped size
        "huge_padding": lambda: _C.h16_conv2d(x, w, False, None, (1, 1), (1 << 20, 1 << 20), (1, 1), 2),
    }
    with pytest.raises((TypeError, ValueError, OverflowError, MemoryError)) as info:
        calls[bad]()
    assert str(info.value)
