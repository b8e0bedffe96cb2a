"""The AVX2 split int8 matmul (csrc/act_split.c, x86/avx2/linear.c qgemm_split): the
weight as vpmaddubsw's unsigned side (w + 128), the activation codes as the signed
side, each breaking pair (a and b of one sign, |a + b| > 128) cut down to 128 in the row and the cut
added from a short per-row list.  The same exact int32 as the reference on rows
with no breaking pair, a few, many, a quarter of them (uniform codes), -128 codes and
weights, K tails, row blocks and tile tails, one and two threads (and row blocks
across the threads); the float outputs bit for bit; and the rules that send a call
to the split kernel or keep the sign trick (by its counter)."""
import pytest
import torch

from mono_quant import _C, kernels
from mono_quant.kernels import reference
from conftest import KERNELS, at_isa

SPLIT_MIN_M = 8  # x86/avx2/linear.c TILE12_MIN_M: fewer rows keep the 5-row tiles


@pytest.fixture(autouse=True)
def split_always():
    """The split kernel on every call of 8 rows or more (set_split_rows(2)): the shapes here are
    below its size rule and many rows above its budget, which are speed rules, not numerics."""
    previous = _C.set_split_rows(2)
    yield
    _C.set_split_rows(previous)


def _acc(x, q, zp, nthreads):
    packed, w_sum, has_m128 = kernels.pack_int8(q)
    n = q.shape[0]
    y = _C.linear_int8(x.numpy(), packed.numpy(), w_sum.numpy(), torch.ones(n).numpy(), zp.numpy(), None, n,
                       has_m128, mode="int8_acc", nthreads=nthreads, reduce_range=False)
    return torch.from_numpy(y)


def _rows(kind, m, k, g):
    """int8 activation rows with a chosen share of breaking pairs."""
    if kind == "none":  # every pair within 128
        return torch.randint(-64, 65, (m, k), generator=g, dtype=torch.int8)
    if kind == "few":  # a Gaussian-like row: a few percent of pairs break
        return (torch.randn(m, k, generator=g) * 34).round().clamp(-127, 127).to(torch.int8)
    if kind == "extremes":  # -128 / 127 next to each other and beside zeros, sparse (within the budget)
        x = torch.randint(-20, 21, (m, k), generator=g, dtype=torch.int8)
        x[:, 0::512] = -128
        x[:, 1::512] = -128
        x[:, 258::512] = 127
        x[:, 259::512] = 127
        x[:, 133::1024] = -128
        x[:, 132::1024] = 0
        x[:, 390::1024] = 127
        x[:, 391::1024] = -1
        return x
    if kind == "one_row_over":  # one row far over the cap: the whole call on the sign trick
        x = (torch.randn(m, k, generator=g) * 34).round().clamp(-127, 127).to(torch.int8)
        x[m // 2] = torch.randint(-127, 128, (k,), generator=g, dtype=torch.int8)
        return x
    if kind == "uniform":  # about a quarter of the pairs break in every row (one sign, past 128)
        return torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    raise ValueError(kind)


def _weight(n, k, g):
    q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    q[::3, ::5] = -128
    q[1::4, ::7] = 127
    zp = torch.randint(-20, 21, (n,), generator=g, dtype=torch.int32)
    return q, zp


KINDS = ["none", "few", "extremes", "one_row_over", "uniform"]


def _split_calls() -> int:
    return int(_C.linear_kernels()["split_rows_calls"])


def _has_split() -> bool:
    return _C.linear_kernels()["dynamic_split_rows"] != "none"


def _check_every_level(x, q, zp, nthreads, takes_split):
    """int8_acc at every level equals the reference's, the split kernel run (where the level has
    one) exactly when takes_split."""
    want = reference.linear_int8(x, q, torch.ones(q.shape[0]), zp, mode="int8_acc")
    for kernel in KERNELS:
        with at_isa(kernel):
            before, split = _split_calls(), _has_split()
            got = _acc(x, q, zp, nthreads)
            assert _split_calls() == before + (split and takes_split), (kernel, tuple(x.shape), q.shape[0])
        assert torch.equal(got, want), (kernel, tuple(x.shape), q.shape[0], int(torch.ne(got, want).sum()))


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_split_rows_exact_int32(kind, nthreads):
    g = torch.Generator().manual_seed(KINDS.index(kind) * 10 + nthreads)
    shapes = [(8, 4, 16), (12, 61, 35), (13, 256, 17), (25, 1024, 40), (48, 515, 33), (49, 300, 50),
              (100, 1536, 19), (9, 4093, 35), (50, 2048, 17)]
    if nthreads == 2:  # 2^24 multiply-adds and more: both threads; 3 panels, 200 rows: row blocks across them
        shapes.append((200, 4096, 48))
    for m, k, n in shapes:
        q, zp = _weight(n, k, g)
        _check_every_level(_rows(kind, m, k, g), q, zp, nthreads, True)  # mode 2: every call of 8 rows or more


def test_split_rows_every_entry_slot():
    """Breaking pairs in one slot only, in both, in consecutive K-groups and at the row's end
    (the list's halves filled unevenly, unused halves reading group 0 with a zero cut)."""
    g = torch.Generator().manual_seed(7)
    m, k, n = 16, 4096, 24  # up to 16 entries a row: within the call's budget (linear.c split_budget)
    q, zp = _weight(n, k, g)
    for pattern in ([0], [2], [0, 2], [1, 3], [0, 1, 2, 3]):
        x = torch.randint(-30, 31, (m, k), generator=g, dtype=torch.int8)
        for r in range(m):
            groups = torch.randperm(k // 4, generator=g)[: r + 1]
            for grp in groups.tolist():
                for j in pattern:
                    pair = (4 * grp + j) // 2 * 2
                    x[r, pair] = 100 if r % 2 else -120
                    x[r, pair + 1] = -90 if r % 3 else 127
        x[-1, -4:] = torch.tensor([127, 127, -128, -128], dtype=torch.int8)
        want = reference.linear_int8(x, q, torch.ones(n), zp, mode="int8_acc")
        for kernel in KERNELS:
            with at_isa(kernel):
                got = _acc(x, q, zp, 1)
            assert torch.equal(got, want), (kernel, pattern)


@pytest.mark.parametrize("m", [SPLIT_MIN_M - 1, SPLIT_MIN_M, 32, 61])
def test_split_rows_dynamic_bits(m):
    """Float inputs (Gaussian, Laplace-like with outliers, an all-zero row): the dynamic call's
    float output equals the reference bit for bit at every level."""
    g = torch.Generator().manual_seed(m)
    k, n = 4096, 70
    w = torch.randn(n, k, generator=g)
    scale = w.abs().amax(1) / 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    zp = torch.zeros(n, dtype=torch.int32)
    bias = torch.randn(n, generator=g)
    packed, w_sum, has_m128 = kernels.pack_int8(q)
    for x in (torch.randn(m, k, generator=g),
              torch.randn(m, k, generator=g) * torch.rand(m, k, generator=g).pow(6) * 30):
        x[m // 2] = 0
        want = reference.linear_int8(x, q, scale, zp, bias)
        for kernel in KERNELS:
            with at_isa(kernel):
                got = torch.from_numpy(_C.linear_int8(
                    x.numpy(), packed.numpy(), w_sum.numpy(), scale.numpy(), zp.numpy(), bias.numpy(), n,
                    has_m128, mode="dynamic", nthreads=1, reduce_range=False))
            assert torch.equal(got, want), kernel


@pytest.mark.parametrize("kp", [4, 8, 60, 64, 68, 124, 128, 132, 1020, 4100])
def test_act_split_every_level(kp):
    """The split itself (its AVX2 count beside the scalar one): codes + cuts give the row back,
    every pair of codes' sum within 128, one cut per pair, the list's length the larger slot's count
    of breaking pairs, the row sums; the same at every level."""
    g = torch.Generator().manual_seed(kp)
    rows = torch.cat([
        (torch.randn(6, kp, generator=g) * 40).round().clamp(-128, 127),
        torch.randint(-128, 128, (4, kp), generator=g),
        torch.full((1, kp), -128), torch.full((1, kp), 127), torch.zeros(1, kp),
    ]).to(torch.int8)
    rows[-1, -2:] = torch.tensor([127, -128], dtype=torch.int8)
    # sums 128 / -128 (kept), 129 / -129 (cut), opposite signs past 128 in magnitude (kept)
    edge = torch.tensor([64, 64, -100, 28, -128, 0, 65, 64, -128, 1, 0, 127, -128, -1, -64, -64, 127, -128, 100, -100],
                        dtype=torch.int8)
    rows = torch.cat([rows, edge.repeat(kp // len(edge) + 1)[:kp].reshape(1, kp)])
    results = {}
    for kernel in KERNELS:
        with at_isa(kernel):
            results[kernel] = [torch.from_numpy(a) for a in _C.act_split(rows.numpy())]
    codes, need, sums, cuts = results[KERNELS[0]]
    for kernel, got in results.items():
        assert all(torch.equal(a, b) for a, b in zip(got, results[KERNELS[0]])), kernel
    assert torch.equal(codes.int() + cuts.int(), rows.int())
    pairs = codes.int().reshape(len(rows), -1, 2).sum(-1).abs()
    assert int(pairs.max()) <= 128
    assert int((cuts.reshape(len(rows), -1, 2) != 0).sum(-1).max()) <= 1
    breaking = rows.int().reshape(len(rows), -1, 2).sum(-1).abs() > 128
    assert torch.equal(need, torch.maximum(breaking[:, 0::2].sum(1), breaking[:, 1::2].sum(1)))
    assert torch.equal(sums, rows.int().sum(1))
    assert torch.equal(cuts != 0, (codes != rows))


def test_act_split_refuses_bad_rows():
    with pytest.raises(ValueError, match="multiple of 4"):
        _C.act_split(torch.zeros(2, 6, dtype=torch.int8).numpy())
    with pytest.raises(TypeError):
        _C.act_split(torch.zeros(2, 8).numpy())


def test_split_switch_same_bits():
    """Every mode of set_split_rows (always, by its rules, never): the same float outputs."""
    g = torch.Generator().manual_seed(3)
    m, k, n = 32, 1024, 48
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    packed, w_sum, has_m128 = kernels.pack_int8(w)
    scale, zp, bias = torch.rand(n, generator=g) / 100, torch.zeros(n, dtype=torch.int32), torch.randn(n, generator=g)
    x = torch.randn(m, k, generator=g)
    args = (x.numpy(), packed.numpy(), w_sum.numpy(), scale.numpy(), zp.numpy(), bias.numpy(), n, has_m128)
    outs = []
    for mode in (2, 1, 0):
        _C.set_split_rows(mode)
        outs.append(torch.from_numpy(_C.linear_int8(*args, mode="dynamic", nthreads=1, reduce_range=False)))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert _C.set_split_rows(True) == 0 and _C.set_split_rows(2) == 1
    with pytest.raises(ValueError, match="mode 0, 1 or 2"):
        _C.set_split_rows(3)


@pytest.mark.parametrize("kind, takes", [("few", True), ("uniform", False)])
def test_split_rules(kind, takes):
    """By its rules (mode 1) a call of Gaussian-like rows takes the split kernel, one of uniform
    codes (a quarter of the pairs breaking, over the budget) keeps the sign trick, and so does a call of
    under 2^21 multiply-adds or under 8 rows; the same bits each way."""
    g = torch.Generator().manual_seed(11)
    _C.set_split_rows(1)
    for m, k, n, big in [(32, 1024, 80, True), (32, 96, 96, False), (7, 4096, 96, False)]:
        x = _rows(kind, m, k, g)
        q, zp = _weight(n, k, g)
        _check_every_level(x, q, zp, 1, takes and big)
