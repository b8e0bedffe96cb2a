"""What the fp16 / bf16 weight conv property tests (test_half_conv_properties.py,
test_half_winograd.py) share: their inputs with special values, drawn by hypothesis, and the
check of a result's NaN and Inf against torch's float64 conv of the same values."""
import numpy as np
import torch

from hypothesis import strategies as st
from test_fp16_properties import encode, values

__all__ = ["draw_conv_operands", "check_specials"]

X_SPECIALS = [0.0, -0.0, 1e-40, 3e4, np.inf, np.nan]  # a float32 subnormal, a value fp16 overflows near
W_SPECIALS = [0.0, -0.0, 6e-8, 1e-5, 6e4, -np.inf, np.nan]  # fp16's subnormals and near its largest
BIAS_SPECIALS = [0.0, np.inf]


def draw_conv_operands(draw, encoding, x_shape, w_shape):
    """(x float32, weight as it crosses to C, the float32 weight it stands for, bf16 flag,
    bias float32 or None): random values with a few specials each."""
    x = values(draw, x_shape, X_SPECIALS)
    w_bits, w, is_bf16 = encode(values(draw, w_shape, W_SPECIALS), encoding)
    bias = values(draw, (w_shape[0],), BIAS_SPECIALS) if draw(st.booleans()) else None
    return x, w_bits, w, is_bf16, bias


def check_specials(y: np.ndarray, exact: torch.Tensor):
    """Assert that the kernel's float32 output ``y`` has the float64 conv ``exact``'s shape, its
    NaNs and its Infs (same sign); return ``y`` as float64 and the mask where ``exact`` is finite
    (where the caller checks its error bound)."""
    got = torch.from_numpy(y).double()
    assert y.dtype == np.float32 and got.shape == exact.shape
    assert torch.equal(torch.isnan(got), torch.isnan(exact))
    inf = torch.isinf(exact)
    assert torch.equal(got[inf], exact[inf])
    return got, torch.isfinite(exact)
