"""Dynamic int8 rows whose codes are all >= 0 (post-ReLU inputs) on the 7-bit kernel (csrc/linear.c,
x86/avx2/linear_u7.c): AVX2 without VNNI, the codes as vpmaddubsw's unsigned side with zero-points 0
(two codes of at most 127 times a weight never saturate it), no sign trick and no split.  The float
output equals the reference bit for bit at every level and with the kernels switched off; one
negative value anywhere keeps the call off it; asymmetric weights (their -128s and zero-points),
K tails, single rows, all-zero rows, the largest codes everywhere, 1 and 2 threads."""
import pytest
import torch

from mono_quant import _C, kernels
from mono_quant.kernels import reference
from conftest import KERNELS, at_isa


def _calls() -> int:
    return int(_C.linear_kernels()["unsigned_rows_calls"])


def _has_unsigned() -> bool:
    return _C.linear_kernels()["dynamic_reduce_range"] != _C.linear_kernels()["dynamic"]


def _weight(n, k, g, asymmetric):
    w = torch.randn(n, k, generator=g)
    if not asymmetric:
        scale = w.abs().amax(1) / 127
        return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale, torch.zeros(n, dtype=torch.int32)
    q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    q[::3, ::5] = -128
    return q, torch.rand(n, generator=g) / 100 + 1e-3, torch.randint(-20, 21, (n,), generator=g, dtype=torch.int32)


def _run(x, q, scale, zp, bias, nthreads, mode):
    packed, w_sum, has_m128 = kernels.pack_int8(q)
    previous = _C.set_split_rows(mode)
    try:
        before = _calls()
        y = torch.from_numpy(_C.linear_int8(x.numpy(), packed.numpy(), w_sum.numpy(), scale.numpy(), zp.numpy(),
                                            bias.numpy(), q.shape[0], has_m128, mode="dynamic", nthreads=nthreads,
                                            reduce_range=False))
        return y, _calls() - before
    finally:
        _C.set_split_rows(previous)


@pytest.mark.parametrize("m,k,n,asymmetric", [(1, 4096, 70, False), (5, 36, 33, True), (13, 1030, 17, False),
                                               (64, 384, 48, True), (8, 3, 5, False)])
def test_unsigned_rows_bits(m, k, n, asymmetric):
    g = torch.Generator().manual_seed(m * k)
    q, scale, zp = _weight(n, k, g, asymmetric)
    bias = torch.randn(n, generator=g)
    x = torch.relu(torch.randn(m, k, generator=g))
    x[0, : min(k, 8)] = 5.0  # the row's largest code, 127, on both codes of pairs
    if m > 2:
        x[1] = 0.0           # an all-zero row
        x[2] = 3.0           # every code 127
    want = reference.linear_int8(x, q, scale, zp, bias)
    for kernel in KERNELS:
        with at_isa(kernel):
            unsigned = _has_unsigned()
            for nthreads in (1, 2):
                for mode in (0, 1):
                    y, calls = _run(x, q, scale, zp, bias, nthreads, mode)
                    assert torch.equal(y.view(torch.int32), want.view(torch.int32)), (kernel, nthreads, mode)
                    assert calls == (1 if unsigned and mode else 0), (kernel, nthreads, mode)


def test_one_negative_code_keeps_the_call_off():
    """A negative code anywhere: the split or the sign trick.  A negative value too small for a
    code of its own (it rounds to 0) does not."""
    g = torch.Generator().manual_seed(3)
    q, scale, zp = _weight(40, 512, g, False)
    bias = torch.zeros(40)
    x = torch.relu(torch.randn(32, 512, generator=g))
    for value, unsigned_calls in ((-0.5, 0), (-1e-4, 1)):
        x[31, 511] = value
        want = reference.linear_int8(x, q, scale, zp, bias)
        for kernel in KERNELS:
            with at_isa(kernel):
                y, calls = _run(x, q, scale, zp, bias, 2, 1)
                assert torch.equal(y, want) and calls == (unsigned_calls if _has_unsigned() else 0), kernel
