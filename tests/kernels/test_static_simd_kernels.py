"""The static int8 SIMD kernels against the pure-torch reference, bit for bit, at every kernel
level and variant this CPU has.  The residual add (the table's static_add: csrc/x86/*/static_eltwise.c,
scalar twin mq_ref_static_add) on lengths around the vector widths.  The direct conv (static_conv:
csrc/x86/*/static_conv.c, scalar twin mq_ref_static_conv in csrc/static_int8.c; AVX2's maddubs sign
trick, AVX-VNNI, AVX-512 VNNI):
tile tails (pixel counts not a multiple of the tile, fewer pixels than a tile, panels in chunks
of 4 + rest, n not a multiple of 16), the im2col-fed path (channels not a multiple of 4, a first
layer's single channel), row blocks split over threads, and extreme codes."""
import math

import pytest
import torch

from conftest import KERNELS, at_isa
from mono_quant import _C
from mono_quant.static import reference as ref

from mono_quant.packing import pack_int8_linear
from mono_quant.tensor import QuantizedWeight

ACTS = {"none": (-math.inf, math.inf), "relu": (0.0, math.inf), "relu6": (0.0, 6.0)}


def rand_q(*shape, seed=0):
    return torch.randint(-127, 128, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


def packed_args(w: torch.Tensor):
    """pack_int8_linear buffers of an int8 [n, c, kh, kw] weight (scale 1)."""
    n = w.shape[0]
    qw = QuantizedWeight(w, torch.ones(n), torch.zeros(n, dtype=torch.int32), 0, "int8", True, torch.float32)
    p = pack_int8_linear(qw, groups=1)
    return p["weight_packed"].numpy(), p["weight_colsum"].numpy(), bool(int(p["weight_packed_info"][3]))

CASES = [  # (batch, c, h, w, n, kernel, stride, padding, dilation)
    (2, 16, 9, 13, 16, (3, 3), (1, 1), (1, 1), (1, 1)),   # 117 pixels: tile tail
    (1, 32, 7, 7, 64, (3, 3), (1, 1), (1, 1), (1, 1)),    # 4 panels (6-pixel tiles), 49 pixels
    (1, 8, 5, 5, 80, (3, 3), (2, 2), (1, 1), (1, 1)),     # 5 panels: 4 + 1
    (1, 12, 6, 6, 40, (3, 3), (1, 1), (1, 1), (1, 1)),    # 3 panels, n tail
    (3, 1, 10, 9, 16, (3, 3), (1, 1), (1, 1), (1, 1)),    # one input channel: im2col-fed
    (1, 3, 6, 5, 10, (3, 2), (2, 1), (2, 0), (1, 2)),     # 3 channels, asymmetric everything
    (2, 4, 1, 1, 3, (1, 1), (1, 1), (0, 0), (1, 1)),      # one pixel per image, fewer than a tile
    (1, 4, 2, 2, 21, (3, 3), (1, 1), (1, 1), (1, 1)),     # 4 pixels, mostly padding
    (2, 16, 8, 8, 32, (1, 1), (2, 2), (0, 0), (1, 1)),    # strided 1x1 shortcut
    (1, 8, 9, 9, 24, (3, 3), (1, 1), (2, 2), (2, 2)),     # dilation 2
    (1, 20, 11, 3, 48, (5, 3), (2, 1), (2, 1), (1, 1)),   # tall kernel, narrow image
]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("out", ["int8_relu_zp", "int8_signed", "float"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"k{c[5][0]}{c[5][1]}")
def test_direct_conv_matches_reference(kernel_isa, case, out, threads):
    b, c, h, w, n, ks, st, pd, dl = case
    x_zp, out_zp, act, inv = {"int8_relu_zp": (-127, -127, "relu", 3.1), "int8_signed": (0, 0, "none", 0.9),
                              "float": (-127, 0, "relu6", None)}[out]
    x = rand_q(b, h, w, c, seed=21)
    wq = rand_q(n, c, *ks, seed=22)
    x_w_scale = torch.rand(n, generator=torch.Generator().manual_seed(23)) * 1e-3 + 1e-4
    bias = torch.randn(n, generator=torch.Generator().manual_seed(24)) if out != "int8_signed" else None
    expected = ref.conv2d_ref(x, wq, x_w_scale, bias, st, pd, dl, 1, ACTS[act], inv, x_zp, out_zp)
    packed, colsum, m128 = packed_args(wq)
    got = torch.empty(expected.shape, dtype=expected.dtype)
    _C.conv2d_static(x.numpy(), packed, colsum, x_w_scale.numpy(), None, None if bias is None else bias.numpy(),
                     got.numpy(), m128, ks, st, pd, dl, 1, *ACTS[act], inv or 1.0, threads, x_zp, out_zp)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("x_code", [-127, 127])
def test_direct_conv_extreme_codes(kernel_isa, x_code):
    """Every activation and weight at the ends of the range, k = 2304: the int32 sums, the
    zero-point and +128 corrections at their largest; -128 weights (the sign trick's |w| = 128)."""
    c, n = 256, 32
    x = torch.full((1, 5, 6, c), x_code, dtype=torch.int8)
    wq = torch.where(torch.arange(n * c * 9).view(n, c, 3, 3) % 3 == 0, -128, 127).to(torch.int8)
    x_w_scale = torch.full((n,), 1e-6)
    for x_zp in (-127, 0, 127):
        expected = ref.conv2d_ref(x, wq, x_w_scale, None, (1, 1), (1, 1), (1, 1), 1, ACTS["none"], 0.5, x_zp, 0)
        packed, colsum, m128 = packed_args(wq)
        got = torch.empty(expected.shape, dtype=torch.int8)
        _C.conv2d_static(x.numpy(), packed, colsum, x_w_scale.numpy(), None, None, got.numpy(), m128, (3, 3),
                         (1, 1), (1, 1), (1, 1), 1, -math.inf, math.inf, 0.5, 1, x_zp, 0)
        assert torch.equal(got, expected)


@pytest.mark.parametrize("out", ["int8", "int8_zp", "float"])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 31, 33, 100, 1029])
def test_static_add_matches_reference(kernel_isa, n, out):
    a, b = rand_q(n, seed=31), rand_q(n, seed=32)
    a[:3] = 127
    b[:3] = 127  # the largest sums: clamped by the activation and the output range
    za, zb, zo, act, inv = {"int8": (0, 0, 0, "none", 1 / 0.02), "int8_zp": (-127, 5, -127, "relu", 1 / 0.05),
                            "float": (-127, -127, 0, "relu6", None)}[out]
    expected = ref.add_ref(a, 0.031, b, 0.047, ACTS[act], inv, za, zb, zo)
    got = torch.empty(n, dtype=expected.dtype)
    _C.add_static(a.numpy(), 0.031, b.numpy(), 0.047, got.numpy(), *ACTS[act], inv or 1.0, 1, za, zb, zo)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("kernel", KERNELS)
def test_conv_refuses_the_code_minus_128(kernel):
    """-128 is no static activation code: the levels would each give other numbers for it
    (AVX2's sign trick, VNNI's q + 128), so conv2d_static refuses it on every level."""
    c = 16
    x = torch.full((1, 6, 6, c), -127, dtype=torch.int8)
    wq = torch.where(torch.arange(8 * c * 9).view(8, c, 3, 3) % 2 == 0, -127, 5).to(torch.int8)
    xws = torch.full((8,), 1e-3)
    expected = ref.conv2d_ref(x, wq, xws, None, (1, 1), (1, 1), (1, 1), 1, ACTS["none"], None, 0, 0)
    packed, colsum, m128 = packed_args(wq)
    got = torch.empty(expected.shape, dtype=expected.dtype)

    def run(xq):
        _C.conv2d_static(xq.numpy(), packed, colsum, xws.numpy(), None, None, got.numpy(), m128, (3, 3), (1, 1),
                         (1, 1), (1, 1), 1, *ACTS["none"], 1.0, 1, 0, 0)

    with at_isa(kernel):
        run(x)
        assert torch.equal(got, expected)
        x[0, 5, 5, 15] = -128
        with pytest.raises(ValueError, match="-128"):
            run(x)


DEPTHWISE_CASES = [  # (batch, c, h, w, kernel, stride, padding, dilation)
    (1, 16, 7, 7, (3, 3), (1, 1), (1, 1), (1, 1)),      # one 16-channel block, no tail
    (2, 17, 6, 5, (3, 3), (2, 2), (1, 1), (1, 1)),      # a block and one tail channel
    (1, 40, 5, 6, (5, 5), (1, 1), (2, 2), (1, 1)),      # 2 blocks + 8, 25 taps (odd: a zero partner)
    (1, 31, 9, 1, (9, 1), (1, 1), (4, 0), (1, 1)),      # a Conv1d standing up: 9 taps down one column
    (1, 64, 4, 4, (2, 2), (1, 1), (0, 0), (1, 1)),      # an even tap count
    (1, 32, 8, 8, (3, 3), (1, 1), (3, 3), (2, 2)),      # dilation, padding past the kernel
    (1, 48, 3, 3, (1, 1), (2, 2), (0, 0), (1, 1)),      # 1x1, strided
    (1, 16, 12, 12, (11, 11), (1, 1), (5, 5), (1, 1)),  # 121 taps: the largest the SIMD kernel takes
    (1, 16, 13, 13, (12, 12), (1, 1), (5, 5), (1, 1)),  # 144 taps: the reference runs
    (1, 15, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1)),      # fewer than 16 channels: the reference runs
]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("out", ["int8_relu_zp", "int8_signed", "float"])
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=lambda c: "x".join(map(str, c[:4])) + f"k{c[4][0]}{c[4][1]}")
def test_depthwise_matches_reference(kernel_isa, case, out, threads):
    """The table's static_dw (csrc/x86/avx2/static_depthwise.c, scalar twin mq_ref_static_dw):
    16-channel blocks and tails, odd and even tap counts, padding, per-channel weight zero-points."""
    b, c, h, w, ks, st, pd, dl = case
    x_zp, out_zp, act, inv = {"int8_relu_zp": (-127, -127, "relu", 3.1), "int8_signed": (0, 0, "none", 0.9),
                              "float": (-127, 0, "relu6", None)}[out]
    x = rand_q(b, h, w, c, seed=41)
    wq = rand_q(c, 1, *ks, seed=42)
    w_zp = None if out == "int8_signed" else torch.randint(-128, 128, (c,), dtype=torch.int32,
                                                           generator=torch.Generator().manual_seed(45))
    x_w_scale = torch.rand(c, generator=torch.Generator().manual_seed(43)) * 1e-3 + 1e-4
    bias = torch.randn(c, generator=torch.Generator().manual_seed(44)) if out != "int8_signed" else None
    w_ref = wq if w_zp is None else wq.int() - w_zp.view(c, 1, 1, 1)
    expected = ref.conv2d_ref(x, w_ref, x_w_scale, bias, st, pd, dl, c, ACTS[act], inv, x_zp, out_zp)
    got = torch.empty(expected.shape, dtype=expected.dtype)
    _C.depthwise_static(x.numpy(), wq[:, 0].permute(1, 2, 0).contiguous().numpy(),
                        None if w_zp is None else w_zp.numpy(), x_w_scale.numpy(),
                        None if bias is None else bias.numpy(), got.numpy(), st, pd, dl, *ACTS[act], inv or 1.0,
                        threads, x_zp, out_zp)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("x_code", [-128, 127])
def test_depthwise_extreme_codes(kernel_isa, x_code):
    """Every activation and weight at the ends of the range with the widest weight zero-points
    (w - w_zp up to 255 in magnitude), 121 taps: the pairs' int16 products and the x_zp * sum(w)
    correction at their largest."""
    c = 35
    x = torch.full((1, 11, 11, c), x_code, dtype=torch.int8)
    wq = torch.where(torch.arange(c * 121).view(c, 1, 11, 11) % 3 == 0, -128, 127).to(torch.int8)
    w_zp = torch.where(torch.arange(c) % 2 == 0, 127, -128).to(torch.int32)
    x_w_scale = torch.full((c,), 1e-7)
    for x_zp in (-127, 0, 127):
        expected = ref.conv2d_ref(x, wq.int() - w_zp.view(c, 1, 1, 1), x_w_scale, None, (1, 1), (5, 5), (1, 1), c,
                                  ACTS["none"], 0.5, x_zp, 0)
        got = torch.empty(expected.shape, dtype=torch.int8)
        _C.depthwise_static(x.numpy(), wq[:, 0].permute(1, 2, 0).contiguous().numpy(), w_zp.numpy(),
                            x_w_scale.numpy(), None, got.numpy(), (1, 1), (5, 5), (1, 1), -math.inf, math.inf, 0.5, 1,
                            x_zp, 0)
        assert torch.equal(got, expected)
