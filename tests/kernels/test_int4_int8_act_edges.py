"""int4 with int8 activations, at every level against the scalar kernels bit for bit,
on inputs built for the edges of the activation quantizer (q4_act_i8: NaN / Inf
groups, all-zero groups, halfway roundings, huge and subnormal values) and of the
batch-1 GEMV (4 rows a quarter of the range apart, the 1-3 rows past whole steps, thread
ranges, a last group shorter than the others, a split's last range of 1-3 weight rows, a layer
of 1-3 rows), and rows not of whole 128-column chunks (run on a copy that is)."""
import numpy as np
import pytest
import torch

from mono_quant import _C
from mono_quant.int4 import quantize_int4
from conftest import KERNELS, SUPPORTED, at_isa

F32 = np.finfo(np.float32)


def _edge_groups(group, rng):
    """One float32 group of `group` values per case (each its own group's maximum)."""
    def base(amax):
        v = np.clip(rng.standard_normal(group) / 3, -1, 1) * amax
        v = v.astype(np.float32)
        v[rng.integers(group)] = amax
        return v
    g = {}
    g["nan"] = base(3.0); g["nan"][5] = np.nan
    g["inf"] = base(3.0); g["inf"][group - 1] = np.inf
    g["-inf"] = base(3.0); g["-inf"][0] = -np.inf
    g["zero"] = np.zeros(group, np.float32)
    g["-zero"] = np.full(group, -0.0, np.float32)
    halves = base(127.0)  # amax 127: scale 1, x * inv exact, many exact halves (half-even)
    halves[:64] = np.arange(-126.5, -126.5 + 64, dtype=np.float32) if group >= 64 else halves[:64]
    halves[64:72] = [0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5]
    halves[72] = -127.0
    g["halves"] = halves
    g["huge"] = base(F32.max); g["huge"][3] = -F32.max
    g["big"] = base(1e37)
    g["tiny"] = base(1e-39)  # subnormal: the scale clamps to FLT_MIN
    g["tiny2"] = (rng.integers(-3, 4, group) * 1e-45).astype(np.float32)  # the smallest subnormals
    g["near_min"] = base(127 * F32.tiny)  # scale about FLT_MIN
    g["one_value"] = np.where(np.arange(group) == 7, np.float32(-2.0), np.float32(0.0)).astype(np.float32)
    return list(g.values())


def _x(m, cols, group, seed, alone=False):
    """Rows of random groups, or (alone) of zeros: then a tiny group's products are not lost
    in the sum of the others."""
    rng = np.random.default_rng(seed)
    cases = _edge_groups(group, rng)
    ngroups = cols // group
    x = (rng.standard_normal((m, cols)) * np.linspace(0.1, 3, cols)).astype(np.float32)
    if alone:
        x[:] = 0
    for i in range(m):  # row i: case i in one group (a NaN / Inf group makes the whole row NaN)
        gi = (i * 3) % ngroups
        x[i, gi * group:(gi + 1) * group] = cases[(i + seed) % len(cases)]
        if ngroups > 1 and not alone:  # and a finite case beside it
            gj = (gi + 1) % ngroups
            x[i, gj * group:(gj + 1) * group] = cases[3 + (i + seed) % (len(cases) - 3)]
    return x


def _weight(rows, cols, group, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.linspace(0.2, 2, cols)
    qw, _ = quantize_int4(w, group_size=group, method="mse")
    return qw


def _check(x, qw):
    args = (x, qw.qdata.numpy(), qw.scale.numpy(), qw.zero_point.numpy(), qw.group)
    with at_isa("scalar"):
        want = _C.q4_linear(*args, int8_activations=1)
    for level in SUPPORTED[1:]:
        with at_isa(level):
            got = _C.q4_linear(*args, int8_activations=1)
        np.testing.assert_array_equal(got, want, err_msg=level)
    return want


@pytest.mark.parametrize("m", [1, 3, 14, 29])
@pytest.mark.parametrize("rows,cols,group", [(54, 1536, 128), (23, 1024, 256), (70, 768, 384), (10, 512, 128),
                                             (3, 256, 128)])
def test_act_edges_every_level_equals_scalar(m, rows, cols, group):
    """54 rows: 3 blocks of 16, 4 rows, 2 past whole steps (the last 4 again); 70: 4 blocks, 4, 2;
    10: a classifier head's 2 steps and 2 rows; 3: fewer than a step (a 4-row copy)."""
    qw = _weight(rows, cols, group, rows + cols)
    ncases = len(_edge_groups(group, np.random.default_rng(0)))
    for seed in range(ncases) if m == 1 else [m]:  # batch 1: each case in turn
        for alone in (False, True):
            want = _check(_x(m, cols, group, seed, alone), qw)
            if m > 3:
                assert np.isnan(want).all(1).any() and np.isfinite(want).all(1).any()


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("rows,cols,group", [(2048 + 16 * 3 + 4 + 3, 256, 128), (4096 + 16 + 7, 128, 128),
                                              (37, 640, 256), (1024 + 22, 1024, 512)])
def test_batch1_row_blocks_and_short_last_group(rows, cols, group, nthreads):
    """Batch 1: the weight split over threads (256 KiB chunks: 2048 rows of 128 bytes), each
    range in 4 quarters read side by side, the 1-3 rows left to the reference; 640 columns in
    groups of 256: a last group of 128."""
    qw = _weight(rows, cols, group, rows)
    rng = np.random.default_rng(rows)
    x = (rng.standard_normal((1, cols)) * np.linspace(0.1, 3, cols)).astype(np.float32)
    args = (x, qw.qdata.numpy(), qw.scale.numpy(), qw.zero_point.numpy(), qw.group)
    bias = rng.standard_normal(rows).astype(np.float32)
    with at_isa("scalar"):
        want = _C.q4_linear(*args, bias=bias, int8_activations=1)
    for level in SUPPORTED[1:]:
        with at_isa(level):
            got = _C.q4_linear(*args, bias=bias, int8_activations=1, nthreads=nthreads)
        np.testing.assert_array_equal(got, want, err_msg=level)


@pytest.mark.parametrize("rows", [10, 34, 7, 5])
def test_a_splits_short_last_range(rows):
    """1024 activation rows on 2 threads: the weight rows go in chunks of 4 (32 on AMX), so a last
    range of 1-3 rows (10 rows: 8-9; 34 on AMX: 32-33), which runs the 4 rows ending there into a
    scratch block and keeps its own; every kernel equals the scalar level bit for bit."""
    m, cols, group = 1024, 512, 128
    qw = _weight(rows, cols, group, rows)
    x = _x(m, cols, group, seed=rows)
    args = (x, qw.qdata.numpy(), qw.scale.numpy(), qw.zero_point.numpy(), qw.group)
    bias = np.random.default_rng(rows).standard_normal(rows).astype(np.float32)
    with at_isa("scalar"):
        want = _C.q4_linear(*args, bias=bias, int8_activations=1)
    for kernel in KERNELS[1:]:
        with at_isa(kernel):
            got = _C.q4_linear(*args, bias=bias, int8_activations=1, nthreads=2)
        np.testing.assert_array_equal(got, want, err_msg=kernel)


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("m", [1, 5, 64])
@pytest.mark.parametrize("rows", [1, 2, 3])
def test_a_layer_of_fewer_rows_than_a_step(rows, m, nthreads):
    """1-3 weight rows (a binary or 3-class head): the kernels run a copy of them, the last
    repeated to a 4-row step, and keep the layer's rows (the scalar reference ran them at
    2.4 us a row at K = 768, 30x the kernel's time at 32 rows); bit for bit the scalar level's,
    the bias added once."""
    cols, group = 768, 128
    qw = _weight(rows, cols, group, 100 + rows)
    x = _x(m, cols, group, seed=m + rows)
    args = (x, qw.qdata.numpy(), qw.scale.numpy(), qw.zero_point.numpy(), qw.group)
    bias = np.random.default_rng(rows).standard_normal(rows).astype(np.float32)
    with at_isa("scalar"):
        want = _C.q4_linear(*args, bias=bias, int8_activations=1)
    assert want.shape == (m, rows)
    for kernel in KERNELS[1:]:
        with at_isa(kernel):
            got = _C.q4_linear(*args, bias=bias, int8_activations=1, nthreads=nthreads)
        np.testing.assert_array_equal(got, want, err_msg=kernel)


def _in_whole_chunks(x, qw):
    """x and the packed weight widened to whole 128-column chunks: zero activations, zero codes."""
    kpad = qw.qdata.shape[1] * 2
    kw = -(-kpad // 128) * 128
    xw = np.zeros((x.shape[0], kw), np.float32)
    xw[:, :x.shape[1]] = x
    packed = np.zeros((qw.qdata.shape[0], kw // 2), np.uint8)
    packed[:, :kpad // 2] = qw.qdata.numpy()
    return xw, packed


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("m", [1, 2, 5, 64])
@pytest.mark.parametrize("rows,cols,group", [(440, 440, 128), (37, 208, 128), (9, 96, 128), (70, 200, 256),
                                              (5, 33, 128), (18, 1100, 512)])
def test_a_row_not_of_whole_chunks_is_the_layer_widened_to_them(rows, cols, group, m, nthreads):
    """in_features 440, 208, 96 ... (kpad not a multiple of 128): int8 activations run on a copy of the
    weight in whole 128-column chunks, the activations zero-padded (their codes 0: nothing added to a
    product or a group's code sum; a group's maximum its real columns'): bit for bit the call on the
    layer widened to whole chunks by hand, at every kernel; the automatic mode takes it from 2 rows
    (1 row: fp32 activations) where the level has an integer kernel."""
    qw = _weight(rows, cols, group, rows + cols)
    assert qw.qdata.shape[1] * 2 % 128  # (not whole chunks)
    rng = np.random.default_rng(m + cols)
    x = (rng.standard_normal((m, cols)) * np.linspace(0.1, 3, cols)).astype(np.float32)
    x[0, -(cols % group or group):] *= 100  # the short last group's maximum: its own real columns
    if m > 1:
        x[1, :] = 0  # an all-zero row
    if m > 2:
        x[2, cols - 1] = np.nan  # a NaN in the last group: that row NaN
    xw, packed = _in_whole_chunks(x, qw)
    scale, zero = qw.scale.numpy(), qw.zero_point.numpy()
    bias = np.random.default_rng(rows).standard_normal(rows).astype(np.float32)
    for kernel in KERNELS:
        with at_isa(kernel):
            got = _C.q4_linear(x, qw.qdata.numpy(), scale, zero, qw.group, bias=bias, int8_activations=1,
                               nthreads=nthreads)
            want = _C.q4_linear(xw, packed, scale, zero, qw.group, bias=bias, int8_activations=1, nthreads=nthreads)
            auto = _C.q4_linear(x, qw.qdata.numpy(), scale, zero, qw.group, bias=bias, nthreads=nthreads)
            fp32 = _C.q4_linear(x, qw.qdata.numpy(), scale, zero, qw.group, bias=bias, int8_activations=0,
                                nthreads=nthreads)
        np.testing.assert_array_equal(got, want, err_msg=kernel)
        if kernel != "scalar" and m >= 2:
            np.testing.assert_array_equal(auto, got, err_msg=kernel)
        elif kernel == "scalar" or m == 1:
            np.testing.assert_array_equal(auto, fp32, err_msg=kernel)
