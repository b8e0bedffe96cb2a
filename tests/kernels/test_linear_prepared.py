"""``_C.linear_int8_prepare`` / ``linear_int8_prepared`` (kernels/int8.py): the dynamic int8
call with its weight arguments checked once must give ``_C.linear_int8``'s result bit for
bit, at every kernel level, and refuse what it cannot take with a clear error."""
import gc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mono_quant import _C, quantize_weight
from mono_quant.kernels.int8 import linear_int8_prepared, prepare_linear_int8
from mono_quant.packing import pack_int8_linear
from conftest import SUPPORTED, at_isa


def _weight_args(n, k, seed=0, symmetric=True, bias=True, m128=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    qw = quantize_weight(w, symmetric=symmetric)
    if m128 and not symmetric:
        qw.qdata.view(-1)[0] = -128
    b = pack_int8_linear(qw)
    scale = qw.scale.float().expand(n).contiguous()
    zp = qw.zero_point.to(torch.int32).expand(n).contiguous()
    has_m128 = bool((qw.qdata == -128).any())
    bias_np = torch.randn(n, generator=g).numpy() if bias else None
    return (b["weight_packed"].numpy(), b["weight_colsum"].numpy(), scale.numpy(), zp.numpy(), bias_np, n, has_m128)


def _both(x, args, k, nthreads=1, reduce_range=False):
    expected = _C.linear_int8(x, *args, "dynamic", nthreads, reduce_range)
    got = _C.linear_int8_prepared(x, _C.linear_int8_prepare(*args, k), nthreads, reduce_range)
    return expected, got


@pytest.mark.parametrize("isa", SUPPORTED)
@pytest.mark.parametrize("n,k,m", [(1, 1, 1), (10, 32, 1), (17, 33, 3), (33, 203, 9), (64, 512, 40)])
@pytest.mark.parametrize("symmetric,bias,reduce_range", [(True, True, False), (False, False, False),
                                                         (False, True, True)])
def test_the_same_bits_as_linear_int8(isa, n, k, m, symmetric, bias, reduce_range):
    args = _weight_args(n, k, seed=n + k, symmetric=symmetric, bias=bias, m128=True)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).numpy()
    with at_isa(isa):
        for nthreads in (1, 2):
            expected, got = _both(x, args, k, nthreads, reduce_range)
            assert np.array_equal(expected, got)


@pytest.mark.parametrize("dtype", ["float16", "bf16", "strided"])
def test_other_inputs_the_kernels_take(dtype):
    args = _weight_args(20, 48, seed=3)
    x = torch.randn(6, 96)
    if dtype == "float16":
        xs = x[:, :48].half().contiguous().numpy()
    elif dtype == "bf16":
        xs = x[:, :48].bfloat16().contiguous().view(torch.int16).numpy()
    else:
        xs = x.numpy()[:, 10:58]  # strided rows
    expected, got = _both(xs, args, 48)
    assert np.array_equal(expected, got)


def test_the_capsule_keeps_the_weight_alive():
    args = _weight_args(24, 40, seed=5)
    x = torch.randn(3, 40).numpy()
    expected = _C.linear_int8(x, *args, "dynamic", 1, False)
    prepared = prepare_linear_int8(tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args), 40)
    del args
    gc.collect()
    assert np.array_equal(linear_int8_prepared(x, prepared), expected)


def test_errors_are_clear():
    args = _weight_args(10, 32)
    prepared = _C.linear_int8_prepare(*args, 32)
    x = np.zeros((2, 32), np.float32)
    with pytest.raises(ValueError, match="features"):
        _C.linear_int8_prepared(np.zeros((2, 31), np.float32), prepared, 1, False)
    with pytest.raises(TypeError):
        _C.linear_int8_prepared(np.zeros((2, 32), np.float64), prepared, 1, False)
    with pytest.raises(ValueError):
        _C.linear_int8_prepared(np.zeros(32, np.float32), prepared, 1, False)
    with pytest.raises(TypeError, match="linear_int8_prepare"):
        _C.linear_int8_prepared(x, object(), 1, False)
    with pytest.raises(TypeError):
        _C.linear_int8_prepared(x, prepared, 1)
    with pytest.raises(ValueError, match="nthreads"):
        _C.linear_int8_prepared(x, prepared, 0, False)
    with pytest.raises(ValueError):  # the weight's own checks, as linear_int8's
        _C.linear_int8_prepare(*args[:2], args[2][:5], *args[3:], 32)
    with pytest.raises(ValueError):
        _C.linear_int8_prepare(*args, 33)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(n=st.integers(1, 40), k=st.integers(1, 80), m=st.integers(0, 9), symmetric=st.booleans(),
       bias=st.booleans(), reduce_range=st.booleans(), isa=st.sampled_from(SUPPORTED))
def test_property_agrees_with_linear_int8(n, k, m, symmetric, bias, reduce_range, isa):
    args = _weight_args(n, k, seed=n * 100 + k, symmetric=symmetric, bias=bias)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m + k)).numpy()
    with at_isa(isa):
        expected, got = _both(x, args, k, 1, reduce_range)
    assert np.array_equal(expected, got)
