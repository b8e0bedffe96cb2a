"""Static int8 kernels (csrc/static_int8.c) against their pure-torch twins
(mono_quant.static.reference), bit for bit, at every ISA level this CPU has."""
import math

import numpy as np
import pytest
import torch

from mono_quant import _C
from mono_quant.packing import pack_int8_linear
from mono_quant.static import reference as ref
from mono_quant.tensor import QuantizedWeight

ACTS = {"none": (-math.inf, math.inf), "relu": (0.0, math.inf), "relu6": (0.0, 6.0)}


def rand_q(*shape, seed=0, lo=-127, hi=127):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int8)


def packed_args(w: torch.Tensor, groups: int):
    """pack_int8_linear buffers of an int8 [n, c/groups, kh, kw] (or [n, k]) weight, scale 1."""
    n = w.shape[0]
    qw = QuantizedWeight(w, torch.ones(n), torch.zeros(n, dtype=torch.int32), 0, "int8", True, torch.float32)
    p = pack_int8_linear(qw, groups=groups)
    return p["weight_packed"].numpy(), p["weight_colsum"].numpy(), bool(int(p["weight_packed_info"][3]))


CONV_CASES = [  # (batch, c, h, w, n, kernel, stride, padding, dilation, groups)
    (1, 3, 7, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (2, 16, 9, 9, 17, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    (3, 8, 6, 6, 24, (1, 1), (1, 1), (0, 0), (1, 1), 1),     # 1x1: the direct path (rows = NHWC input)
    (1, 5, 6, 7, 3, (1, 1), (1, 1), (0, 0), (1, 1), 1),      # 1x1 with k not a multiple of 4
    (2, 12, 8, 5, 6, (3, 2), (1, 2), (2, 0), (2, 1), 3),     # groups, dilation, odd padding
    (1, 33, 5, 5, 40, (1, 1), (2, 2), (0, 0), (1, 1), 1),    # strided 1x1 shortcut
]


ZPS = {"zp0": (0, 0), "relu_codes": (-127, -127), "mixed": (-127, 5)}  # (x_zp, out_zp)


# (int8 output, activation, zero-points): every activation at zero-point 0, the zero-points on int8 outputs
VARIANTS = [(o, a, "zp0") for o in (True, False) for a in ACTS] + [(True, a, z) for a in ACTS for z in ZPS if z != "zp0"]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{'int8' if v[0] else 'float'}_out-{v[1]}-{v[2]}")
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"g{c[-1]}")
def test_conv2d_static_matches_reference(isa, case, variant):
    out_int8, act, zps = variant
    x_zp, out_zp = ZPS[zps]
    b, c, h, w, n, ks, st, pd, dl, groups = case
    x = rand_q(b, h, w, c, seed=1)
    wq = rand_q(n, c // groups, *ks, seed=2)
    x_w_scale = torch.rand(n, generator=torch.Generator().manual_seed(3)) * 1e-3 + 1e-4
    bias = torch.randn(n, generator=torch.Generator().manual_seed(4))
    inv_out = 0.37 if out_int8 else None
    expected = ref.conv2d_ref(x, wq, x_w_scale, bias, st, pd, dl, groups, ACTS[act], inv_out, x_zp, out_zp)
    packed, colsum, m128 = packed_args(wq, groups)
    out = torch.empty(expected.shape, dtype=expected.dtype)
    _C.conv2d_static(x.numpy(), packed, colsum, x_w_scale.numpy(), None, bias.numpy(), out.numpy(), m128, ks, st,
                     pd, dl, groups, *ACTS[act], inv_out or 1.0, 2, x_zp, out_zp)
    assert torch.equal(out, expected)
    if out_int8:
        assert int(out.min()) >= (out_zp if act != "none" else -127)


@pytest.mark.parametrize("out_int8", [True, False], ids=["int8_out", "float_out"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 3), (33, 64, 10)], ids=str)
def test_linear_as_1x1_conv(isa, shape, out_int8):
    rows, k, n = shape
    x, wq = rand_q(rows, k, seed=5), rand_q(n, k, seed=6)
    x_w_scale = torch.full((n,), 0.01)
    inv_out = 2.0 if out_int8 else None
    expected = ref.linear_ref(x, wq, x_w_scale, None, ACTS["none"], inv_out)
    packed, colsum, m128 = packed_args(wq, 1)
    out = torch.empty(rows, 1, 1, n, dtype=expected.dtype)
    _C.conv2d_static(x.view(rows, 1, 1, k).numpy(), packed, colsum, x_w_scale.numpy(), None, None, out.numpy(),
                     m128, (1, 1), (1, 1), (0, 0), (1, 1), 1, *ACTS["none"], inv_out or 1.0)
    assert torch.equal(out.view(rows, n), expected)


@pytest.mark.parametrize("zps", list(ZPS))
@pytest.mark.parametrize("act", ["none", "relu6"])
@pytest.mark.parametrize("case", [(1, 7, 5, 3, (3, 3), (1, 1), (1, 1), (1, 1)),
                                  (2, 9, 8, 19, (3, 3), (2, 2), (1, 1), (1, 1)),
                                  (1, 6, 6, 4, (5, 3), (1, 2), (2, 0), (1, 2))], ids=str)
def test_depthwise_static_matches_reference(isa, case, act, zps):
    x_zp, out_zp = ZPS[zps]
    b, h, w, c, ks, st, pd, dl = case
    x = rand_q(b, h, w, c, seed=7)
    wq = rand_q(c, 1, *ks, seed=8)
    x_w_scale = torch.rand(c, generator=torch.Generator().manual_seed(9)) * 1e-2
    bias = torch.randn(c)
    expected = ref.conv2d_ref(x, wq, x_w_scale, bias, st, pd, dl, c, ACTS[act], 0.5, x_zp, out_zp)
    out = torch.empty(expected.shape, dtype=torch.int8)
    _C.depthwise_static(x.numpy(), wq[:, 0].permute(1, 2, 0).contiguous().numpy(), None, x_w_scale.numpy(),
                        bias.numpy(), out.numpy(), st, pd, dl, *ACTS[act], 0.5, 2, x_zp, out_zp)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("zps", [(0, 0, 0), (-127, -127, -127), (-127, 0, 3)], ids=str)
@pytest.mark.parametrize("out_int8", [True, False], ids=["int8_out", "float_out"])
def test_add_and_pool_match_reference(out_int8, zps):
    za, zb, zo = zps
    a, b = rand_q(2, 5, 3, 7, seed=10), rand_q(2, 5, 3, 7, seed=11)
    inv = 1 / 0.07 if out_int8 else None
    expected = ref.add_ref(a, 0.05, b, 0.03, ACTS["relu"], inv, za, zb, zo)
    out = torch.empty(a.shape, dtype=expected.dtype)
    _C.add_static(a.numpy(), 0.05, b.numpy(), 0.03, out.numpy(), *ACTS["relu"], inv or 1.0, 2, za, zb, zo)
    assert torch.equal(out, expected)
    mul = float(np.float32(0.05) / np.float32(15))
    expected = ref.avgpool_ref(a, mul, ACTS["none"], inv, za, zo)
    out = torch.empty(2, 7, dtype=expected.dtype)
    _C.avgpool_static(a.numpy(), mul, out.numpy(), *ACTS["none"], inv or 1.0, za, zo)
    assert torch.equal(out, expected)


def test_quantize_and_dequantize_static_round_trip():
    x = torch.randn(2, 3, 5, 7) * 4
    x[0, 0, 0, :3] = torch.tensor([0.5, 1.5, -2.5]) * 0.1  # ties round to even
    q = torch.empty(2, 5, 7, 3, dtype=torch.int8)
    _C.quantize_static(x.numpy(), 10.0, q.numpy())
    assert torch.equal(q, ref.quantize_ref(x, 10.0))
    assert int(q.min()) >= -127
    back = torch.empty(2, 3, 5, 7)
    _C.dequantize_static(q.numpy(), 0.1, back.numpy())
    assert torch.equal(back, q.permute(0, 3, 1, 2).float() * torch.tensor(0.1))
    relu = x.clamp(min=0)  # ReLU codes: zero-point -127, all 255 levels on [0, max]
    _C.quantize_static(relu.numpy(), 20.0, q.numpy(), 1, -127)
    assert torch.equal(q, ref.quantize_ref(relu, 20.0, -127)) and int(q.min()) == -127
    _C.dequantize_static(q.numpy(), 0.05, back.numpy(), 1, -127)
    assert torch.equal(back, (q.permute(0, 3, 1, 2).float() + 127) * torch.tensor(0.05))
    with pytest.raises(ValueError, match="zero_point must be in -127..127"):
        _C.quantize_static(relu.numpy(), 20.0, q.numpy(), 1, -128)
    rows = torch.randn(4, 9)
    q2 = torch.empty(4, 9, dtype=torch.int8)
    _C.quantize_static(rows.numpy(), 30.0, q2.numpy())
    assert torch.equal(q2, ref.quantize_ref(rows, 30.0))



@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 64, 9, 9), (2, 300, 7, 11), (1, 16385, 1, 3), (3, 1, 5, 5), (2, 5, 1, 1),
                                   (1, 17, 1, 130)], ids=str)
def test_quantize_static_blocks(shape, threads):
    """NCHW -> NHWC quantize in blocks of pixels (a tile of codes transposed): block tails, more
    channels than a 64-pixel block holds, more than the tile (one pixel at a time), one channel,
    one pixel; NaN and infinities."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(51)) * 3
    flat = x.view(-1)
    flat[:4] = torch.tensor([math.nan, math.inf, -math.inf, 0.25])
    for zp in (0, -127):
        q = torch.empty(shape[0], shape[2], shape[3], shape[1], dtype=torch.int8)
        _C.quantize_static(x.numpy(), 20.0, q.numpy(), threads, zp)
        assert torch.equal(q, ref.quantize_ref(x, 20.0, zp))

def test_bad_arguments_raise_clear_errors():
    x = rand_q(1, 4, 4, 8)
    packed, colsum, m128 = packed_args(rand_q(4, 8, 1, 1), 1)
    good = dict(x=x.numpy(), packed=packed, w_sum=colsum, x_w_scale=np.ones(4, np.float32), w_zero_point=None,
                bias=None, out=np.empty((1, 4, 4, 4), np.int8), w_has_m128=m128, kernel=(1, 1), stride=(1, 1),
                padding=(0, 0), dilation=(1, 1), groups=1, act_lo=-math.inf, act_hi=math.inf, inv_out_scale=1.0)
    _C.conv2d_static(**good)
    with pytest.raises(TypeError, match="x must have dtype int8"):
        _C.conv2d_static(**dict(good, x=x.numpy().astype(np.float32)))
    with pytest.raises(TypeError, match="C-contiguous"):
        _C.conv2d_static(**dict(good, x=np.asfortranarray(np.zeros((1, 4, 4, 8), np.int8))[:, :, :, ::2]))
    with pytest.raises(ValueError, match="out must have shape"):
        _C.conv2d_static(**dict(good, out=np.empty((1, 3, 4, 4), np.int8)))
    with pytest.raises(ValueError, match="packed must have"):
        _C.conv2d_static(**dict(good, packed=packed[:-1]))
    with pytest.raises(ValueError, match="inv_out_scale"):
        _C.conv2d_static(**dict(good, inv_out_scale=float("nan")))
    with pytest.raises(ValueError, match="act_lo <= act_hi"):
        _C.conv2d_static(**dict(good, act_lo=1.0, act_hi=0.0))
    with pytest.raises(TypeError, match="writable"):
        ro = np.empty((1, 4, 4, 4), np.int8)
        ro.flags.writeable = False
        _C.conv2d_static(**dict(good, out=ro))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        _C.depthwise_static(rand_q(1, 2, 2, 3).numpy(), rand_q(5, 5, 3).numpy(), None, np.ones(3, np.float32), None,
                            np.empty((1, 1, 1, 3), np.int8), (1, 1), (0, 0), (1, 1), 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="out must have shape"):
        _C.add_static(x.numpy(), 1.0, x.numpy(), 1.0, np.empty((1, 4, 4, 7), np.int8), 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="a_scale"):
        _C.add_static(x.numpy(), -1.0, x.numpy(), 1.0, np.empty((1, 4, 4, 8), np.int8), 0.0, 1.0, 1.0)
