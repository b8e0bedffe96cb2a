"""The int8 matmul's many-row tiles (AVX2 maddubs: 12 rows x 8 channels from 8 rows;
VNNI: 8 rows x 3 panels) and every tail of them, on every kernel level and variant:
exact int32 accumulators and the float epilogue against the pure-torch twin."""
import pytest
import torch

from mono_quant import kernels
from mono_quant.kernels import reference
from conftest import KERNELS, at_isa


def _weight(n, k, g):
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    w[::2, ::3] = -128  # |w| = 128 as uint8 in the sign trick
    w[1::4] = 127
    return w


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n,k", [(1, 3), (8, 64), (9, 131), (24, 67), (40, 260)])
def test_many_row_tiles_exact(kernel, n, k):
    """Rows 8..40: one or more 12-row tiles and a tail of 1..11; outputs 1..40: half panels
    beyond n, and a last panel's second half present or not."""
    g = torch.Generator().manual_seed(n * 1000 + k)
    w = _weight(n, k, g)
    zps = (torch.zeros(n, dtype=torch.int32), torch.randint(-128, 128, (n,), generator=g, dtype=torch.int32))
    packed = {}
    for m in range(8, 41):
        x = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
        x[::3] = torch.where(x[::3] < 0, -127, 127).to(torch.int8)  # the largest pair sums: 2 * 128 * 127
        for zp in zps:
            want = reference.linear_int8(x, w, torch.ones(n), zp, mode="int8_acc")
            with at_isa(kernel):
                if kernel not in packed:
                    packed[kernel] = kernels.pack_int8(w)
                p, w_sum, has_m128 = packed[kernel]
                got = kernels.linear_int8(x, p, w_sum, torch.ones(n), zp, None, n, has_m128, mode="int8_acc")
            assert torch.equal(got, want), (m, int(torch.ne(got, want).sum()))


@pytest.mark.parametrize("kernel", KERNELS)
def test_many_row_tiles_dynamic_bits(kernel):
    g = torch.Generator().manual_seed(9)
    n, k = 35, 200
    w = _weight(n, k, g)
    zp = torch.randint(-10, 11, (n,), generator=g, dtype=torch.int32)
    scale = torch.rand(n, generator=g) * 0.01 + 1e-4
    bias = torch.randn(n, generator=g)
    for m in (8, 11, 12, 13, 23, 24, 25, 37):
        x = torch.randn(m, k, generator=g) * 2
        x[m // 2] = 0
        want = reference.linear_int8(x, w, scale, zp, bias)
        with at_isa(kernel):
            p, w_sum, has_m128 = kernels.pack_int8(w)
            got = kernels.linear_int8(x, p, w_sum, scale, zp, bias, n, has_m128)
        assert torch.equal(got, want), m
