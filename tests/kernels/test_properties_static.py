"""Hypothesis properties of the static int8 entry points: random geometries equal
the pure-torch twin at a random ISA level, and hostile arguments raise clearly."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mono_quant import _C
from mono_quant.static import reference as ref
from test_properties_c import CLEAR_ERRORS, PROFILE, SUPPORTED
from test_static_kernels import packed_args, rand_q

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ACTS = [(-math.inf, math.inf), (0.0, math.inf), (0.0, 6.0)]


@PROFILE
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 2), st.integers(1, 2),
       st.sampled_from([1, 1, 2]), st.sampled_from(ACTS), st.booleans(), st.sampled_from(SUPPORTED),
       st.sampled_from([1, 2, 3]), st.integers(0, 2**16), st.sampled_from([0, -127, 3]), st.sampled_from([0, -127]))
def test_conv2d_static_equals_the_twin(batch, h, w, cg, ng, kh, kw, stride, pad, dil, groups, act, out_int8, isa,
                                       threads, seed, x_zp, out_zp):
    c, n = cg * groups, ng * groups
    if h + 2 * pad < dil * (kh - 1) + 1 or w + 2 * pad < dil * (kw - 1) + 1:
        return
    x, wq = rand_q(batch, h, w, c, seed=seed), rand_q(n, cg, kh, kw, seed=seed + 1)
    x_w_scale = torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 0.01 + 1e-4
    bias = torch.randn(n, generator=torch.Generator().manual_seed(seed + 2))
    inv = 3.0 if out_int8 else None
    st_, pd, dl = (stride, stride), (pad, pad), (dil, dil)
    expected = ref.conv2d_ref(x, wq, x_w_scale, bias, st_, pd, dl, groups, act, inv, x_zp, out_zp)
    packed, colsum, m128 = packed_args(wq, groups)
    out = torch.empty(expected.shape, dtype=expected.dtype)
    previous = _C.set_isa(isa)
    try:
        _C.conv2d_static(x.numpy(), packed, colsum, x_w_scale.numpy(), None, bias.numpy(), out.numpy(), m128,
                         (kh, kw), st_, pd, dl, groups, *act, inv or 1.0, threads, x_zp, out_zp)
        if groups == c == n:
            dw = torch.empty(expected.shape, dtype=expected.dtype)
            _C.depthwise_static(x.numpy(), wq[:, 0].permute(1, 2, 0).contiguous().numpy(), None,
                                x_w_scale.numpy(), bias.numpy(), dw.numpy(), st_, pd, dl, *act, inv or 1.0, threads,
                                x_zp, out_zp)
            assert torch.equal(dw, expected)
    finally:
        _C.set_isa(previous)
    assert torch.equal(out, expected)


hostile = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.floats(), st.text(max_size=3),
                    st.tuples(st.integers(-2, 3), st.integers(-2, 3)),
                    hnp.arrays(st.sampled_from([np.int8, np.int32, np.float32, np.float64]),
                               hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)))


@PROFILE
@given(st.sampled_from(["quantize_static", "dequantize_static", "conv2d_static", "depthwise_static", "add_static",
                        "avgpool_static"]), st.lists(hostile, max_size=17))
def test_hostile_arguments_raise_clearly_or_work(name, args):
    """Never a crash: any argument list either works or raises a clear error."""
    try:
        getattr(_C, name)(*args)
    except CLEAR_ERRORS as e:
        assert str(e)
