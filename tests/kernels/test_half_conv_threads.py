"""The direct fp16 / bf16 conv (csrc/h16_dconv.c) and Winograd (csrc/h16_winograd.c) past their
one-thread threshold (ONE_THREAD_MACS, 2^24 multiply-adds): below it both run one thread whatever
``nthreads`` says, so test_half_dconv.py's and test_half_winograd.py's cases never split work.
These do (pixel strips across threads, several 64-channel blocks, groups, dilation, stride; for
Winograd several blocks and a batch in passes) and must still give the scalar level's bits at
every level and thread count.  Under qemu (tools/test_isa_levels.sh sets
MONO_QUANT_TEST_EMULATED) only the smallest case of each runs: emulation is ~50x slower."""
import os

import pytest
import torch

from mono_quant import _C
from mono_quant.kernels.half_conv import WINOGRAD_BLOCK, WINOGRAD_MAX_TRAFFIC, half_conv2d_arrays
from conftest import SUPPORTED, at_isa

ONE_THREAD_MACS = 1 << 24  # h16_dconv.c's and h16_winograd.c's
EMULATED = bool(os.environ.get("MONO_QUANT_TEST_EMULATED"))
emulated_skip = pytest.mark.skipif(EMULATED, reason="too slow under qemu: the smallest case runs there")

# (batch, in, out, kernel, stride, padding, dilation, groups, height, width)
DIRECT_CASES = [
    pytest.param((2, 64, 130, (3, 3), (1, 1), (1, 1), (1, 1), 1, 12, 10), id="130out-3blocks"),
    pytest.param((1, 96, 150, (3, 3), (2, 1), (2, 2), (2, 1), 2, 30, 22), id="150out-g2-s2x1-d2x1",
                 marks=emulated_skip),
    pytest.param((1, 24, 200, (5, 5), (1, 1), (2, 2), (1, 1), 1, 16, 14), id="200out-5x5", marks=emulated_skip),
    pytest.param((4, 64, 64, (3, 3), (1, 2), (3, 1), (3, 1), 4, 40, 27), id="g4-16out-per-group",
                 marks=emulated_skip),
]
# (batch, in, out, padding, height, width)
WINOGRAD_CASES = [
    pytest.param((2, 64, 130, 1, 14, 14), id="130out-3blocks"),
    pytest.param((5, 136, 200, 1, 10, 10), id="200out-4blocks-batch-in-passes", marks=emulated_skip),
    pytest.param((3, 72, 150, 0, 17, 19), id="150out-odd-tiles", marks=emulated_skip),
]


def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def direct_macs(case):
    batch, cin, cout, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups, height, width = case
    pixels = out_size(height, kh, sh, ph, dh) * out_size(width, kw, sw, pw, dw)
    return batch * pixels * cout * cin // groups * kh * kw


def winograd_macs(case):
    batch, cin, cout, padding, height, width = case
    return batch * (height + 2 * padding - 2) * (width + 2 * padding - 2) * cin * 9 * cout


def same_bits_everywhere(run):
    """run(nthreads) at every level and 1-3 threads against the scalar level at one thread."""
    with at_isa("scalar"):
        want = run(1)
    for level in SUPPORTED:
        with at_isa(level):
            for nthreads in (1, 2, 3):
                assert torch.equal(run(nthreads), want), (level, nthreads)


@pytest.mark.skipif("avx2" not in SUPPORTED, reason="needs an AVX2 CPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", DIRECT_CASES)
def test_the_direct_conv_gives_the_same_bits_on_several_threads(dtype, case):
    batch, cin, cout, kernel, stride, padding, dilation, groups, height, width = case
    assert direct_macs(case) > ONE_THREAD_MACS
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, cin, height, width, generator=g)
    w = torch.randn(cout, cin // groups, *kernel, generator=g).to(dtype)
    arrays = half_conv2d_arrays(w, torch.randn(cout, generator=g))
    same_bits_everywhere(lambda nthreads: torch.from_numpy(_C.h16_conv2d(
        x.numpy(), *arrays, stride, padding, dilation, groups, nthreads=nthreads, direct=True)))


@pytest.mark.skipif("avx2" not in SUPPORTED, reason="needs an AVX2 CPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", WINOGRAD_CASES)
def test_winograd_gives_the_same_bits_on_several_threads(dtype, case):
    batch, cin, cout, padding, height, width = case
    assert winograd_macs(case) > ONE_THREAD_MACS and cout > WINOGRAD_BLOCK
    g = torch.Generator().manual_seed(4)
    x = torch.randn(batch, cin, height, width, generator=g)
    w = torch.randn(cout, cin, 3, 3, generator=g).to(dtype)
    arrays = half_conv2d_arrays(w, torch.randn(cout, generator=g))
    same_bits_everywhere(lambda nthreads: torch.from_numpy(_C.h16_conv2d(
        x.numpy(), *arrays, (1, 1), (padding, padding), (1, 1), 1, nthreads=nthreads, winograd=True)))


def test_one_winograd_case_goes_in_passes():
    """h16_winograd.c's passes: batch x in x tiles x blocks past WINOGRAD_MAX_TRAFFIC, one image within."""
    batch, cin, cout, padding, height, width = WINOGRAD_CASES[1].values[0]
    tiles = ((height + 2 * padding - 1) // 2) * ((width + 2 * padding - 1) // 2)
    per_image = cin * tiles * -(-cout // WINOGRAD_BLOCK)
    assert per_image <= WINOGRAD_MAX_TRAFFIC < batch * per_image
