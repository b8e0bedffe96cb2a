"""Batch 1 (one activation row) reads several weight panels side by side (DRAM streams in
place of one): dynamic int8 4 panels (x86/gemv4_256.h in x86/avx2/linear.c, linear_u7.c and
x86/vnni256_kernel.h; qgemv_4panels in x86/avx512_vnni/linear.c), weight-only 2 panels
(wgemv_2panels in x86/avx2/linear.c and x86/avx512/linear.c), int4 4 rows a quarter of the
range apart (x86/avx2/int4.c, x86/avx512_vnni/int4.c).  Every panel
count (whole groups of 4 and 1-3 panels left over), a last panel's second half present or not,
weights at -128 and 127, zero-points, and the cut of a big call over two threads (a thread's
first panel then need not be a multiple of 4): exact against the pure-torch twin, and the same
bits at 1 and 2 threads."""
import numpy as np
import pytest
import torch

from mono_quant import _C, kernels
from mono_quant.kernels import reference
from mono_quant.packing import pack_int8_linear
from mono_quant.tensor import QuantizedWeight
from conftest import KERNELS, at_isa

# outputs: 1..13 panels of 16 (4, 8, 12: whole groups; others leave 1-3), half panels beyond n
OUTS = [1, 8, 16, 40, 64, 65, 72, 96, 120, 136, 200, 208]


def _weight(n, k, g):
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    w[::3, ::5] = -128
    w[1::5, 1::2] = 127
    return w


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("k", [1, 5, 64, 131, 1024])
def test_one_row_exact_every_panel_count(kernel, k):
    g = torch.Generator().manual_seed(k)
    for n in OUTS:
        w = _weight(n, k, g)
        x = torch.randint(-127, 128, (1, k), generator=g, dtype=torch.int8)
        x[0, ::2] = torch.where(x[0, ::2] < 0, -127, 127).to(torch.int8)  # the largest pair sums
        for zp in (torch.zeros(n, dtype=torch.int32), torch.randint(-128, 128, (n,), generator=g, dtype=torch.int32)):
            want = reference.linear_int8(x, w, torch.ones(n), zp, mode="int8_acc")
            with at_isa(kernel):
                p, w_sum, has_m128 = kernels.pack_int8(w)
                got = kernels.linear_int8(x, p, w_sum, torch.ones(n), zp, None, n, has_m128, mode="int8_acc")
            assert torch.equal(got, want), (n, int(torch.ne(got, want).sum()))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("reduce_range", [False, True])
def test_one_row_float_outputs_match_the_twin(kernel, reduce_range):
    g = torch.Generator().manual_seed(3)
    for n, k in [(64, 200), (77, 96), (130, 515), (208, 64)]:
        w = _weight(n, k, g)
        zp = torch.randint(-10, 11, (n,), generator=g, dtype=torch.int32)
        scale, bias = torch.rand(n, generator=g) * 0.01 + 1e-4, torch.randn(n, generator=g)
        x = torch.randn(1, k, generator=g) * 2 + 0.3
        want = reference.linear_int8(x, w, scale, zp, bias, reduce_range=reduce_range)
        with at_isa(kernel):
            p, w_sum, has_m128 = kernels.pack_int8(w)
            got = kernels.linear_int8(x, p, w_sum, scale, zp, bias, n, has_m128, reduce_range=reduce_range)
        assert torch.equal(got, want), (n, k)


@pytest.mark.parametrize("reduce_range", [False, True])
@pytest.mark.parametrize("n", [4096 + 48, 4096 + 16 * 5])  # 259 / 261 panels: each thread's share has a tail
def test_one_row_split_over_two_threads_same_bits(isa, n, reduce_range):
    k = 4096  # 2^24 multiply-adds and more: the call is cut over the threads
    g = torch.Generator().manual_seed(n)
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    qw = QuantizedWeight(w, torch.rand(n, generator=g) * 1e-2 + 1e-3, torch.zeros(n, dtype=torch.int32), 0, "int8",
                         True, torch.float32)
    pk = pack_int8_linear(qw)
    x = torch.randn(1, k, generator=g)
    args = (x.numpy(), pk["weight_packed"].numpy(), pk["weight_colsum"].numpy(), qw.scale.numpy(),
            qw.zero_point.numpy(), torch.randn(n, generator=g).numpy(), n, bool(int(pk["weight_packed_info"][3])))
    before = int(_C.linear_kernels()["split_calls"])
    two = _C.linear_int8(*args, nthreads=2, reduce_range=reduce_range)
    assert int(_C.linear_kernels()["split_calls"]) > before
    np.testing.assert_array_equal(two, _C.linear_int8(*args, nthreads=1, reduce_range=reduce_range))
    want = reference.linear_int8(x, w, qw.scale, qw.zero_point, torch.from_numpy(args[5]), reduce_range=reduce_range)
    np.testing.assert_array_equal(two, want.numpy())


# ---- int4, batch 1: 4 weight rows a quarter of the range apart (q4_gemv_i8_row, q4_gemv_i8_quarters) ----

@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("rows", [1, 4, 5, 6, 7, 8, 9, 11, 130, 1027])
@pytest.mark.parametrize("k, group", [(384, 128), (1152, 128), (1024, 256)])
def test_int4_one_row_every_quarter_and_tail(isa, rows, nthreads, k, group):
    from mono_quant.int4 import quantize_int4
    g = torch.Generator().manual_seed(rows)
    qw, _ = quantize_int4(torch.randn(rows, k, generator=g), group_size=group, method="rtn")
    x = torch.randn(1, k, generator=g) * torch.linspace(0.1, 3, k)
    bias = torch.randn(rows, generator=g).numpy()
    args = (x.numpy(), qw.qdata.numpy(), qw.scale.numpy(), qw.zero_point.numpy(), qw.group)
    with at_isa("scalar"):
        want = _C.q4_linear(*args, bias=bias, int8_activations=1)
    np.testing.assert_array_equal(_C.q4_linear(*args, bias=bias, int8_activations=1, nthreads=nthreads), want)


# ---- int8 weight-only, batch 1: 2 panels side by side (wgemv_2panels, AVX2 and AVX-512) ---------
# (float sums: a level's tiles all add a row's products in one order, so a row's bits are the
# same alone as among other rows; levels differ from each other in the last bits)

@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("zero_points", [False, True])
def test_weight_only_one_row_same_bits_as_in_a_tile(kernel, zero_points):
    g = torch.Generator().manual_seed(11)
    for n in OUTS:
        for k in (4, 37, 256, 1000):
            w = _weight(n, k, g)
            zp = (torch.randint(-20, 21, (n,), generator=g, dtype=torch.int32) if zero_points
                  else torch.zeros(n, dtype=torch.int32))
            scale, bias = torch.rand(n, generator=g) * 0.01 + 1e-4, torch.randn(n, generator=g)
            x = torch.randn(3, k, generator=g) * 3
            with at_isa(kernel):
                p, w_sum, has_m128 = kernels.pack_int8(w)
                rows = kernels.linear_int8(x, p, w_sum, scale, zp, bias, n, has_m128, mode="weight_only")
                one = kernels.linear_int8(x[1:2], p, w_sum, scale, zp, bias, n, has_m128, mode="weight_only")
            assert torch.equal(one[0], rows[1]), (n, k)
            torch.testing.assert_close(one[0], reference.linear_int8(x[1:2], w, scale, zp, bias, mode="weight_only")[0],
                                       rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [4096 + 16, 4096 + 48])  # odd panel counts: a single panel left per thread
def test_weight_only_one_row_split_over_two_threads_same_bits(isa, n):
    k = 4096
    g = torch.Generator().manual_seed(n)
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    qw = QuantizedWeight(w, torch.rand(n, generator=g) * 1e-2 + 1e-3, torch.zeros(n, dtype=torch.int32), 0, "int8",
                         True, torch.float32)
    pk = pack_int8_linear(qw)
    x = torch.randn(3, k, generator=g).numpy()
    args = (pk["weight_packed"].numpy(), pk["weight_colsum"].numpy(), qw.scale.numpy(), qw.zero_point.numpy(),
            torch.randn(n, generator=g).numpy(), n, bool(int(pk["weight_packed_info"][3])))
    two = _C.linear_int8(x[1:2], *args, mode="weight_only", nthreads=2)
    np.testing.assert_array_equal(two, _C.linear_int8(x[1:2], *args, mode="weight_only", nthreads=1))
    np.testing.assert_array_equal(two[0], _C.linear_int8(x, *args, mode="weight_only", nthreads=1)[1])
