"""Static int8's direct conv on the unsigned-codes kernel (csrc/static_int8.c, x86/avx2/static_conv_ux.c;
AVX2 without VNNI): a work item whose codes x - x_zp are all >= 0 with each pair of channels summing
to at most 255 (a ReLU output's codes at zero-point -127 below half of the calibrated range) runs
x - x_zp against the signed weight, nothing to correct.  The reference's bits at every level, with
the kernels on and off, 1 and 2 threads (work items of row blocks); items holding a pair past 255
(saturated channels, as clipping observers give: 254 + 254 on both pairs of a K-group, at corners)
or a code below the zero-point keep the sign trick; im2col blocks (channels % 4) are not taken."""
import pytest
import torch

from mono_quant import _C
from mono_quant.static import reference as ref
from test_static_kernels import ACTS, packed_args, rand_q


@pytest.fixture(autouse=True)
def restore_mode():
    previous = _C.set_split_rows(1)
    yield
    _C.set_split_rows(previous)


def _relu_codes(b, h, w, c, zp, seed, saturated=False):
    """A ReLU output's codes: zp + d, d = round(v / scale) mostly small, 0 for half of them, the
    largest pair inside the kernel's range (d 128 + 127 = 255).  saturated: pairs at the top code
    (d 254 + 254 at zero-point -127) at corners, inside, on both pairs of a K-group of a pixel, and
    one just past (128 + 128)."""
    g = torch.Generator().manual_seed(seed)
    d = (torch.relu(torch.randn(b, h, w, c, generator=g)) * 25).round().clamp(0, 120)
    d[:, 0, 0, :2] = torch.tensor([128.0, 127.0])
    if saturated:
        d[:, -1, -1, :2] = 254.0
        d[:, 0, -1, 2:4] = 254.0
        d[:, h // 2, w // 2, :4] = torch.tensor([254.0, 200.0, 128.0, 128.0])
        d[:, h - 2, 1, c - 2:] = torch.tensor([100.0, 254.0])
    return (d + zp).clamp(-127, 127).to(torch.int8)


def _conv(x, wq, ks, st, pd, dl, x_zp, act, threads, mode):
    n = wq.shape[0]
    x_w_scale = torch.rand(n, generator=torch.Generator().manual_seed(3)) * 1e-3 + 1e-4
    bias = torch.randn(n, generator=torch.Generator().manual_seed(4))
    packed, colsum, m128 = packed_args(wq, 1)
    expected = ref.conv2d_ref(x, wq, x_w_scale, bias, st, pd, dl, 1, ACTS[act], 0.37, x_zp, 3)
    previous = _C.set_split_rows(mode)
    try:
        before = _C.linear_kernels()["unsigned_conv_images"]
        out = torch.empty(expected.shape, dtype=expected.dtype)
        _C.conv2d_static(x.numpy(), packed, colsum, x_w_scale.numpy(), None, bias.numpy(), out.numpy(), m128,
                         ks, st, pd, dl, 1, *ACTS[act], 0.37, threads, x_zp, 3)
        return out, expected, _C.linear_kernels()["unsigned_conv_images"] - before
    finally:
        _C.set_split_rows(previous)


CASES = [  # (batch, c, h, w, n, kernel, stride, padding, dilation)
    (2, 64, 12, 11, 40, (3, 3), (1, 1), (1, 1), (1, 1)),
    (1, 32, 9, 9, 16, (3, 3), (2, 2), (1, 1), (2, 2)),
    (3, 16, 5, 6, 33, (5, 3), (1, 2), (2, 1), (1, 1)),
    (2, 8, 6, 6, 24, (1, 1), (1, 1), (0, 0), (1, 1)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])))
@pytest.mark.parametrize("x_zp,saturated", [(-127, False), (-100, False), (0, False), (9, False), (-127, True)],
                         ids=["zp-127", "zp-100", "zp0", "zp9", "zp-127-saturated"])
def test_static_unsigned_gives_the_references_bits(isa, case, x_zp, saturated):
    b, c, h, w, n, ks, st, pd, dl = case
    x = _relu_codes(b, h, w, c, x_zp, seed=c, saturated=saturated)
    wq = rand_q(n, c, *ks, seed=2, lo=-128)
    unsigned = _C.linear_kernels()["dynamic_conv_unsigned"] != "none"
    refused = saturated  # every image holds pairs past 255: the items with them refused
    for act in ("none", "relu"):
        for threads in (1, 2):
            for mode in (0, 1):
                out, expected, count = _conv(x, wq, ks, st, pd, dl, x_zp, act, threads, mode)
                assert torch.equal(out, expected), (act, threads, mode)
                if not refused or mode == 0:
                    assert (count > 0) == (unsigned and mode > 0), (act, threads, mode)


def test_static_unsigned_refuses_items_it_cannot_take(isa):
    """Pairs past 255 refuse their work item only; a code below the zero-point every item that
    reads it; channels % 4 (im2col blocks) none taken."""
    unsigned = _C.linear_kernels()["dynamic_conv_unsigned"] != "none"
    wq = rand_q(32, 64, 3, 3, seed=5, lo=-128)
    x = _relu_codes(1, 20, 9, 64, -127, seed=6)
    x[0, 18, 4, 6:8] = 127  # a pair of row 18 at 254 + 254
    args = ((3, 3), (1, 1), (1, 1), (1, 1), -127, "none")
    for threads in (1, 2):
        out, expected, count = _conv(x, wq, *args, threads, 1)
        assert torch.equal(out, expected)
        # one item at 1 thread (refused); row blocks at 2: the one holding row 18 refused
        assert count == (0 if threads == 1 or not unsigned else 3), threads
    below = x.clone()
    below[0, 3, 3, 0] = -127
    below[0, 3, 3, 0:2] = torch.tensor([-127, -127], dtype=torch.int8)
    out, expected, count = _conv(below, wq, (3, 3), (1, 1), (1, 1), (1, 1), -126, "none", 1, 1)
    assert torch.equal(out, expected) and count == 0  # codes -127 below the zero-point -126
    odd = _relu_codes(2, 7, 7, 6, -127, seed=7)
    out, expected, count = _conv(odd, rand_q(16, 6, 3, 3, seed=8, lo=-128), *args, 2, 1)
    assert torch.equal(out, expected) and count == 0
