"""Dynamic int8 calls whose codes are all >= 0 (post-ReLU inputs) on the 7-bit kernel (csrc/linear.c,
x86/avx2/linear_u7.c): AVX2 without VNNI, the codes as vpmaddubsw's unsigned side with zero-points 0
(two codes of at most 127 times a weight never saturate it), no sign trick and no split.  The float
output equals the reference bit for bit at every level and with the kernels switched off; one
negative code anywhere keeps the call off it (GELU outputs: the split); asymmetric weights (their
-128s and zero-points), K tails (odd k), single rows, all-zero rows, the largest codes everywhere,
1 and 2 threads."""
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


def _takes_unsigned(x) -> bool:
    """The rule (csrc/linear.c), from the reference's codes: none is negative."""
    return bool((reference.quantize_activations(x)[0] >= 0).all())


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


@pytest.mark.parametrize("m,k,n,asymmetric", [(1, 4096, 70, False), (5, 36, 33, True), (13, 1031, 17, False),
                                               (64, 384, 48, True), (8, 3, 5, False)])
@pytest.mark.parametrize("rows", ["relu", "gelu"])
def test_unsigned_rows_bits(m, k, n, asymmetric, rows):
    g = torch.Generator().manual_seed(m * k)
    q, scale, zp = _weight(n, k, g, asymmetric)
    bias = torch.randn(n, generator=g)
    x = torch.randn(m, k, generator=g)
    x = torch.relu(x) if rows == "relu" else torch.nn.functional.gelu(x)
    x[0, : min(k, 8)] = 5.0  # the row's largest code, 127, on both codes of pairs: 254
    if m > 2:
        x[1] = 0.0           # an all-zero row
        x[2] = 3.0           # every code 127
    want = reference.linear_int8(x, q, scale, zp, bias)
    assert _takes_unsigned(x) == (rows == "relu")
    for kernel in KERNELS:
        with at_isa(kernel):
            unsigned = _has_unsigned() and _takes_unsigned(x)
            for nthreads in (1, 2):
                for mode in (0, 1):
                    y, calls = _run(x, q, scale, zp, bias, nthreads, mode)
                    assert torch.equal(y.view(torch.int32), want.view(torch.int32)), (kernel, nthreads, mode)
                    assert calls == (1 if unsigned and mode else 0), (kernel, nthreads, mode)


def test_one_negative_code_keeps_the_call_off():
    """One row with a negative code (-1 beside a pair of 127s; a Gaussian row): the split or the
    sign trick for the whole call.  A negative value too small for a code of its own: the
    unsigned kernel."""
    g = torch.Generator().manual_seed(3)
    q, scale, zp = _weight(160, 512, g, False)  # 2^21 multiply-adds and more: the split where refused
    bias = torch.zeros(160)
    base = torch.relu(torch.randn(32, 512, generator=g)).clamp(max=3.0)
    gauss = torch.randn(512, generator=g)
    cases = [  # row 31's pair (0, 1), its value at 511, a whole row; unsigned calls
        ((4.0, 4.0), -0.03, None, 0),   # scale 4 / 127: code -1
        ((4.0, 4.0), -0.01, None, 1),   # -0.01 rounds to code 0
        ((4.0, 4.0), 0.0, gauss, 0),
    ]
    for pair, value, row, unsigned_calls in cases:
        x = base.clone()
        x[31] = x[31].clamp(min=0)  # row 31's only negative value is the planted one
        x[31, :2] = torch.tensor(pair)
        x[31, 511] = value
        if row is not None:
            x[31] = row
        want = reference.linear_int8(x, q, scale, zp, bias)
        assert _takes_unsigned(x) == bool(unsigned_calls)
        for kernel in KERNELS:
            with at_isa(kernel):
                for nthreads in (1, 2):
                    split = _C.linear_kernels()["split_rows_calls"]
                    y, calls = _run(x, q, scale, zp, bias, nthreads, 1)
                    split = _C.linear_kernels()["split_rows_calls"] - split
                    assert torch.equal(y, want) and calls == (unsigned_calls if _has_unsigned() else 0), (kernel, value)
                    if _has_unsigned() and not unsigned_calls and _C.linear_kernels()["dynamic_split_rows"] != "none":
                        assert split == 1  # the refused call on the split kernel


@pytest.mark.parametrize("seed", range(12))
def test_unsigned_rows_rule_on_random_rows(seed):
    """Rows near the rule's edge (post-ReLU shifted down by a little: negative values that round to
    code 0 or not; GELU of several widths; odd k): the kernel runs exactly when no code is
    negative, with the reference's bits."""
    g = torch.Generator().manual_seed(seed)
    m, k, n = int(torch.randint(1, 40, (1,), generator=g)), int(torch.randint(1, 300, (1,), generator=g)), 19
    q, scale, zp = _weight(n, k, g, seed % 2 == 1)
    bias = torch.randn(n, generator=g)
    shift = float(torch.rand(1, generator=g)) * (0.01 if seed % 2 else 0.2)
    x = torch.relu(torch.randn(m, k, generator=g)) - shift * torch.rand(m, k, generator=g)
    if seed % 3 == 0:
        x = torch.nn.functional.gelu(torch.randn(m, k, generator=g) * (1 + seed))
    want = reference.linear_int8(x, q, scale, zp, bias)
    for kernel in KERNELS:
        with at_isa(kernel):
            y, calls = _run(x, q, scale, zp, bias, 1 + seed % 2, 1)
            assert torch.equal(y.view(torch.int32), want.view(torch.int32)), kernel
            assert calls == (1 if _has_unsigned() and _takes_unsigned(x) else 0), kernel
