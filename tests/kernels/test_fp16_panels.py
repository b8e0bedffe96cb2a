"""The fp16 / bf16 panel path in C (``_C.h16_linear(..., panels=True)``, csrc/fp16.c and the
levels' h16_panels): each 16-channel panel widened once per block of rows into the weight-only
tiles' layout, then their tiles.  K tails (1, 37, 1030), channel tails (1, 23, 65), fp16 and bf16,
extreme and zero weights, several row blocks with a 1-2 row remainder (AVX2 merges it into the
block before), thread splits; within fp32 rounding of the float64 product, the same bits at any
thread count and at every level that has the path (one sum order).  Also run under ASan."""
import numpy as np
import pytest
import torch

from mono_quant import _C
from conftest import SUPPORTED, at_isa

# (rows, K, outputs): 4096 columns give 60-row blocks (121: 60 + 61 on AVX2), 50001 give 6-row
# blocks (8: 6 + 2, merged on AVX2)
SHAPES = [(40, 1, 1), (33, 37, 23), (64, 300, 65), (100, 4, 17), (256, 1030, 65), (121, 4096, 17),
          (8, 50001, 3)]
PANEL_LEVELS = [level for level in ("avx2", "avx512") if level in SUPPORTED]


def _case(shape, bf16):
    m, k, n = shape
    g = torch.Generator().manual_seed(m * k + n)
    x = torch.randn(m, k, generator=g) * 3
    w = torch.randn(n, k, generator=g)
    if n > 1:
        w[0, :] = 65504.0
    w[-1, ::2] = 0.0
    wh = w.bfloat16() if bf16 else w.half()
    arr = wh.view(torch.int16).numpy() if bf16 else wh.numpy()
    return x, wh, arr, torch.randn(n, generator=g)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_panels_against_float64_every_tail(isa, shape, bf16):
    m, k, n = shape
    x, wh, arr, bias = _case(shape, bf16)
    one = _C.h16_linear(x.numpy(), arr, bf16, bias=bias.numpy(), nthreads=1, panels=True)
    assert np.array_equal(one, _C.h16_linear(x.numpy(), arr, bf16, bias=bias.numpy(), nthreads=2, panels=True))
    exact = x.double() @ wh.double().T + bias.double()
    magnitude = x.double().abs() @ wh.double().abs().T + bias.double().abs()
    assert bool(((torch.from_numpy(one).double() - exact).abs() <= magnitude * (k + 2) * 2.0**-23).all())


@pytest.mark.skipif(len(PANEL_LEVELS) < 2, reason="needs both the AVX2 and the AVX-512 level")
@pytest.mark.parametrize("shape", SHAPES)
def test_panels_same_bits_at_both_levels(shape):
    """The AVX2 and AVX-512 panel tiles add each channel's 4 k-lanes and then the lanes in one
    order: the same bits (as kernels/row_rules.py says)."""
    x, _, arr, bias = _case(shape, False)
    outs = []
    for level in PANEL_LEVELS:
        with at_isa(level):
            outs.append(_C.h16_linear(x.numpy(), arr, False, bias=bias.numpy(), nthreads=1, panels=True))
    assert np.array_equal(outs[0], outs[1])
