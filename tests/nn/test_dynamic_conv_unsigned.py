"""The dynamic direct conv's unsigned-codes kernel (x86/avx2/static_conv_ux.c): AVX2 without VNNI,
an image whose codes are all >= 0 (a post-ReLU image's symmetric codes 0..127, reduce_range's 7-bit
codes) as vpmaddubsw's unsigned side against the signed weight, nothing to split or correct.  The
same bits as the sign trick, the im2col route and the reference at every level: whole K-groups
and im2col blocks (channels % 4), padding / strides / dilation, both work-item modes, 1 and 2
threads, the largest codes on every channel, a batch mixing such images with others, NaN (row
blocks on two threads: test_dynamic_conv_split.py's test_conv_two_threads_row_blocks)."""
import pytest
import torch

from mono_quant import _C
from conftest import KERNELS, at_isa
from test_dynamic_conv_split import _bits, _quantized, _run as _run_counting, _runs_against_the_references

CASES = [  # in, out, kernel, stride, padding, dilation
    (8, 16, 3, 1, 1, 1),
    (8, 20, 3, 2, 1, 1),
    (12, 18, 3, 1, 2, 2),
    (16, 24, 1, 1, 0, 1),
    (3, 16, 3, 1, 1, 1),       # a stem's 3 channels: im2col blocks
    (6, 33, (3, 1), (1, 2), (0, 1), 1),  # 6 channels, rectangular, a panel's tail
    (32, 5, 5, 1, 2, 1),       # fewer outputs than a panel
]
IDS = [str(c) for c in CASES]


def _relu_images(cin, batch, size=(9, 11), seed=0):
    """Post-ReLU images with the largest code (127) on both channels of pairs, at a corner and
    inside (every pair's sum at 254, the kernel's worst case), and an all-zero image."""
    torch.manual_seed(seed)
    x = torch.relu(torch.randn(batch, cin, *size))
    x[:, :, 0, 0] = 6.0
    x[:, :, size[0] // 2, size[1] // 2] = 6.0
    if batch > 2:
        x[2] = 0.0
    return x


def _run(qconv, x, threads, mode, direct=True):
    return _run_counting(qconv, x, threads, mode, direct, counter="unsigned_conv_images")


def _has_unsigned(isa):
    with at_isa(isa):
        return _C.linear_kernels()["dynamic_conv_unsigned"] != "none"


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("isa", KERNELS)
def test_unsigned_conv_gives_the_sign_tricks_bits(case, isa):
    conv, qconv = _quantized(case, 1)
    for batch in (1, 3):
        x = _relu_images(case[0], batch, seed=batch)
        sign, runs = _runs_against_the_references(conv, qconv, x, isa, counter="unsigned_conv_images")
        for y, count in runs:
            assert torch.equal(_bits(y), _bits(sign))
            assert count == (batch if _has_unsigned(isa) else 0)  # every image: the kernel really ran


@pytest.mark.parametrize("isa", KERNELS)
def test_unsigned_conv_reduce_range_and_mixed_batches(isa):
    """reduce_range's 7-bit codes are never negative (with a zero-point): the kernel on any image.
    8-bit codes: only the images without a negative value, NaN images neither (NaN out)."""
    conv, qconv = _quantized((8, 16, 3, 1, 1, 1), 2)
    x = _relu_images(8, 4, seed=3)
    x[1, 3, 4, 4] = -0.25          # codes of both signs: the split or the sign trick
    x[3, 0, 2, 2] = float("nan")
    with at_isa(isa):
        sign, _ = _run(qconv, x, 1, 0)
        y, count = _run(qconv, x, 1, 1)
        assert torch.equal(_bits(y), _bits(sign)) and torch.isnan(y[3]).all() and not torch.isnan(y[:3]).any()
        assert count == (2 if _has_unsigned(isa) else 0)
        qconv.set_reduce_range(True)
        try:
            signed = torch.randn(3, 8, 9, 11)
            for images in (signed, x[:3]):
                sign, _ = _run(qconv, images, 1, 0)
                y, count = _run(qconv, images, 2, 1)
                assert torch.equal(_bits(y), _bits(sign))
                assert count == (3 if _has_unsigned(isa) else 0)
        finally:
            qconv.set_reduce_range(False)
