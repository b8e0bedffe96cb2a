"""Static int8's direct conv on the split kernel (csrc/conv_split.c on each work item's padded
rows, x86/avx2/dconv_split.c; AVX2 without VNNI): the reference's bits with the split always on,
by its rules and off, at every level, zero-points in the codes and the padding, 1 and 2 threads."""
import math

import pytest
import torch

from mono_quant import _C
from mono_quant.static import reference as ref
from test_static_kernels import ACTS, packed_args, rand_q

CASES = [  # (batch, c, h, w, n, kernel, stride, padding, dilation)
    (2, 64, 12, 11, 40, (3, 3), (1, 1), (1, 1), (1, 1)),
    (1, 32, 9, 9, 16, (3, 3), (2, 2), (1, 1), (2, 2)),
    (3, 16, 5, 6, 33, (5, 3), (1, 2), (2, 1), (1, 1)),
    (2, 8, 6, 6, 24, (1, 1), (1, 1), (0, 0), (1, 1)),
]


@pytest.fixture(autouse=True)
def restore_mode():
    previous = _C.set_split_rows(1)
    yield
    _C.set_split_rows(previous)


def _codes(b, h, w, c, seed):
    """Post-ReLU-like codes with pairs of channels past 128 together (127 + 127, 120 + 127) at corners."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.relu(torch.randn(b, h, w, c, generator=g)) * 30).round().clamp(-127, 127).to(torch.int8)
    x[:, 0, 0, :2] = 127
    x[:, -1, -1, :2] = torch.tensor([120, 127], dtype=torch.int8)
    x[:, h // 2, w // 2, 2:4] = -127
    return x


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])))
@pytest.mark.parametrize("zps", [(0, 0), (-127, -127), (-3, 5)], ids=["zp0", "relu_codes", "mixed"])
def test_static_split_gives_the_references_bits(isa, case, zps):
    b, c, h, w, n, ks, st, pd, dl = case
    x_zp, out_zp = zps
    x = _codes(b, h, w, c, seed=c)
    wq = rand_q(n, c, *ks, seed=2)
    x_w_scale = torch.rand(n, generator=torch.Generator().manual_seed(3)) * 1e-3 + 1e-4
    bias = torch.randn(n, generator=torch.Generator().manual_seed(4))
    packed, colsum, m128 = packed_args(wq, 1)
    has_split = _C.linear_kernels()["dynamic_conv_split"] != "none"
    for act in ("none", "relu"):
        expected = ref.conv2d_ref(x, wq, x_w_scale, bias, st, pd, dl, 1, ACTS[act], 0.37, x_zp, out_zp)
        for mode in (0, 1, 2):
            for threads in (1, 2):
                _C.set_split_rows(mode)
                before = _C.linear_kernels()["split_conv_images"]
                out = torch.empty(expected.shape, dtype=expected.dtype)
                _C.conv2d_static(x.numpy(), packed, colsum, x_w_scale.numpy(), None, bias.numpy(), out.numpy(), m128,
                                 ks, st, pd, dl, 1, *ACTS[act], 0.37, threads, x_zp, out_zp)
                assert torch.equal(out, expected), (act, mode, threads)
                if mode == 2:  # every work item on the split kernel where the level has it
                    assert (_C.linear_kernels()["split_conv_images"] > before) == has_split
                if mode == 0:
                    assert _C.linear_kernels()["split_conv_images"] == before


def test_static_split_rules_keep_uniform_codes_on_the_sign_trick(isa):
    x = rand_q(2, 12, 12, 64, seed=9)  # uniform codes: a quarter of the pairs break
    wq = rand_q(32, 64, 3, 3, seed=2)
    packed, colsum, m128 = packed_args(wq, 1)
    out = torch.empty(2, 12, 12, 32)
    before = _C.linear_kernels()["split_conv_images"]
    _C.conv2d_static(x.numpy(), packed, colsum, torch.full((32,), 1e-3).numpy(), None, None, out.numpy(), m128,
                     (3, 3), (1, 1), (1, 1), (1, 1), 1, -math.inf, math.inf, 1.0, 1, 0, 0)
    assert _C.linear_kernels()["split_conv_images"] == before
