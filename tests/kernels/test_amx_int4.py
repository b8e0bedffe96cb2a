"""int4 weights x int8 activations on AMX tiles (x86/amx/int4.c): whole 16-row tiles on tdpbsud
against B tiles laid out once per panel pair, the rows past whole tiles in a zero-padded tile
(8-15 of them) or on the VNNI kernel (1-7), the reference's float epilogue per group.  The group sums are exact in any order, so every
case must give the reference's bits and the VNNI kernel's: rows around the 16- and 32-row
tiles and across the row chunks, channels around the 16-channel panels (a last panel part
empty, a panel pair's second panel alone), groups of 128 to 4096 (past 512 the epilogue's t in
int32, up to 512 in float), a short last group, codes and zero-points at their extremes,
non-finite and zero activations, two threads.  Skipped where the CPU (or the OS) has no AMX."""
import numpy as np
import pytest
import torch

from mono_quant import _C
from mono_quant.int4 import quantize_int4
from mono_quant.kernels.settings import SETTINGS
from conftest import AMX, at_isa

needs_amx = pytest.mark.skipif(not AMX, reason="the CPU or the OS has no AMX-INT8")

# 1-7 rows past whole tiles: the VNNI kernel; 8-15: a zero-padded tile
ROWS = [7, 8, 15, 16, 17, 24, 31, 32, 33, 39, 48, 65]
CHANNELS = [1, 15, 16, 17, 33, 48]
# (cols, group): one chunk; a short last group; t in int32 (group 640); float t at its
# limit (512); the largest group
WIDTHS = [(128, 128), (384, 256), (1280, 640), (1024, 512), (4096, 4096)]


def _three(x, qdata, scale, zero, group, nthreads=1):
    """The reference's, AMX's and the VNNI kernel's outputs."""
    args = (x, qdata, scale, zero, group)
    with at_isa("scalar"):
        ref = _C.q4_linear(*args, int8_activations=1)
    with at_isa("avx512"):
        assert _C.linear_kernels()["int4_int8"] == "amx_int8"
        amx = _C.q4_linear(*args, int8_activations=1, nthreads=nthreads)
        with SETTINGS.for_tests(amx=False):
            assert _C.linear_kernels()["int4_int8"] == "avx512_vnni"
            vnni = _C.q4_linear(*args, int8_activations=1, nthreads=nthreads)
    return ref, amx, vnni


def _quantized(rows, cols, group, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.linspace(0.2, 2, cols)
    qw, _ = quantize_int4(w, group_size=group, method="rtn")
    return qw.qdata.numpy(), qw.scale.numpy(), qw.zero_point.numpy(), qw.group


@needs_amx
@pytest.mark.parametrize("cols, group", WIDTHS)
@pytest.mark.parametrize("m", ROWS)
def test_same_bits_as_reference_and_vnni(m, cols, group):
    for channels in CHANNELS:
        qdata, scale, zero, group_ = _quantized(channels, cols, group, seed=m * 7 + channels)
        x = (np.random.default_rng(m + channels).standard_normal((m, cols)) * 2).astype(np.float32)
        ref, amx, vnni = _three(x, qdata, scale, zero, group_)
        np.testing.assert_array_equal(amx, ref, err_msg=f"{channels} channels")
        np.testing.assert_array_equal(vnni, ref, err_msg=f"{channels} channels")


@needs_amx
@pytest.mark.parametrize("group", [128, 512, 640, 4096])
def test_extreme_codes_and_zero_points(group):
    # the largest sums the epilogue sees: codes 15 (or 0) against activations of 127 in every
    # column, zero-points 0 and 255 (u4.4), so 16 dot and z * xqsum reach their bounds
    rows, cols, m = 35, 2 * group if group < 4096 else group, 40
    rng = np.random.default_rng(group)
    qdata = np.full((rows, cols // 2), 0xFF, np.uint8)
    qdata[1::3] = 0
    qdata[2::5] = rng.integers(0, 256, qdata[2::5].shape, dtype=np.uint8)
    ngroups = cols // group
    zero = np.where(np.arange(rows)[:, None] % 2 == 0, 255, 0).astype(np.uint8).repeat(ngroups, 1)
    scale = np.full((rows, ngroups), np.float16(0.5)).view(np.uint16)
    x = np.full((m, cols), 3.0, np.float32)
    x[1::2] = -3.0
    x[3::4, ::7] = 0.0
    ref, amx, vnni = _three(x, qdata, scale.view(np.float16), zero, group)
    np.testing.assert_array_equal(amx, ref)
    np.testing.assert_array_equal(vnni, ref)


@needs_amx
def test_nonfinite_and_zero_activation_rows():
    qdata, scale, zero, group = _quantized(40, 512, 128, seed=3)
    x = np.random.default_rng(3).standard_normal((48, 512)).astype(np.float32)
    x[2, 5] = np.nan
    x[17, 400] = np.inf
    x[20] = 0.0
    x[33, 130:256] = -0.0
    x[40, :128] = 1e-42  # subnormal: the scale clamps to FLT_MIN
    ref, amx, vnni = _three(x, qdata, scale, zero, group)
    np.testing.assert_array_equal(amx, ref)
    np.testing.assert_array_equal(vnni, ref)
    assert np.isnan(amx[2]).all() and np.isnan(amx[17]).all() and np.isfinite(amx[20]).all()


@needs_amx
@pytest.mark.parametrize("m, channels, cols", [(1000, 64, 1024), (300, 1000, 384), (2048, 48, 3072)])
def test_two_threads_same_bits_as_one(m, channels, cols):
    # split for real over channel ranges (the split counter moves); the last case's rows span
    # several row chunks of the kernel (about 1 MiB of activations each)
    qdata, scale, zero, group = _quantized(channels, cols, 128, seed=m)
    x = np.random.default_rng(m).standard_normal((m, cols)).astype(np.float32)
    with at_isa("avx512"):
        one = _C.q4_linear(x, qdata, scale, zero, group, int8_activations=1, nthreads=1)
        before = int(_C.linear_kernels()["split_calls"])
        two = _C.q4_linear(x, qdata, scale, zero, group, int8_activations=1, nthreads=2)
        assert int(_C.linear_kernels()["split_calls"]) > before
    np.testing.assert_array_equal(two, one)
    with at_isa("scalar"):
        ref = _C.q4_linear(x[::97], qdata, scale, zero, group, int8_activations=1)
    np.testing.assert_array_equal(one[::97], ref)  # every row alone: its bits in any batch
