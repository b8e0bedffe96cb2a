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
                        "avgpool_static", "static_program", "static_program_run"]), st.lists(hostile, max_size=17))
def test_hostile_arguments_raise_clearly_or_work(name, args):
    """Never a crash: any argument list either works or raises a clear error."""
    try:
        getattr(_C, name)(*args)
    except CLEAR_ERRORS as e:
        assert str(e)


def _prog_node(kind, in0, in1, out, geometry=(0,) * 10, zps=(0, 0, 0), out_float=False, m128=False,
               epilogue=(-math.inf, math.inf, 1.0), scales=(1.0, 1.0, 1.0), arrays=()):
    ints = tuple(geometry) + tuple(zps) + (int(out_float), int(m128))
    return (kind, in0, in1, out, ints, tuple(epilogue) + tuple(scales), arrays)


@PROFILE
@given(st.integers(0, 3), st.integers(1, 6), st.integers(1, 9), st.integers(1, 9), st.integers(1, 20),
       st.integers(1, 3), st.integers(1, 2), st.integers(0, 1), st.booleans(), st.sampled_from(SUPPORTED),
       st.sampled_from([1, 2, 3]), st.integers(0, 2**16))
def test_static_program_equals_the_kernels_op_by_op(batch, c, h, w, n, k, stride, pad, pool_out, isa, threads, seed):
    """quantize -> conv (relu) -> conv -> add (relu) -> pool or 1x1 conv (float out): one program call
    equals the same kernels called one by one, at a random ISA, thread count and geometry."""
    if h + 2 * pad < k or w + 2 * pad < k:
        return
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c, h, w, generator=g)
    wa, wb, wc = rand_q(n, c, k, k, seed=seed), rand_q(n, n, 3, 3, seed=seed + 1), rand_q(5, n, 1, 1, seed=seed + 2)
    (pa, sa, ma), (pb, sb, mb), (pc, sc, mc) = packed_args(wa, 1), packed_args(wb, 1), packed_args(wc, 1)
    xwa, xwb, xwc = (torch.rand(m, generator=g).numpy() * 0.01 + 1e-4 for m in (n, n, 5))
    bias = torch.randn(n, generator=g).numpy()
    relu, none = (0.0, math.inf), (-math.inf, math.inf)
    geo_a = (c, n, k, k, stride, stride, pad, pad, 1, 1)
    geo_b, geo_c = (n, n, 3, 3, 1, 1, 1, 1, 1, 1), (n, 5, 1, 1, 1, 1, 0, 0, 1, 1)
    nodes = [_prog_node(0, -1, -1, 0, (c,) + (0,) * 9, (0, 0, 0), epilogue=(0.0, 0.0, 7.0)),
             _prog_node(1, 0, -1, 1, geo_a, (0, -127, 0), False, ma, relu + (4.0,), arrays=(pa, sa, xwa, bias)),
             _prog_node(1, 1, -1, 2, geo_b, (-127, 3, 0), False, mb, none + (5.0,), arrays=(pb, sb, xwb, None)),
             _prog_node(3, 2, 1, 3, zps=(3, -127, -127), epilogue=relu + (6.0,), scales=(0.2, 0.3, 1.0))]
    if pool_out:
        nodes.append(_prog_node(4, 3, -1, 4, zps=(-127, 0, 0), out_float=True, scales=(1.0, 1.0, 0.05)))
    else:
        nodes.append(_prog_node(1, 3, -1, 4, geo_c, (-127, 0, 0), True, mc, none + (1.0,), arrays=(pc, sc, xwc, None)))
    previous = _C.set_isa(isa)
    try:
        got = _C.static_program_run(_C.static_program(nodes), x.numpy(), threads)
        q = np.empty((batch, h, w, c), np.int8)
        _C.quantize_static(x.numpy(), 7.0, q, 1, 0)
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        a, b, s = (np.empty((batch, oh, ow, n), np.int8) for _ in range(3))
        _C.conv2d_static(q, pa, sa, xwa, None, bias, a, ma, (k, k), (stride, stride), (pad, pad), (1, 1), 1, *relu,
                         4.0, threads, 0, -127)
        _C.conv2d_static(a, pb, sb, xwb, None, None, b, mb, (3, 3), (1, 1), (1, 1), (1, 1), 1, *none, 5.0, threads,
                         -127, 3)
        _C.add_static(b, 0.2, a, 0.3, s, *relu, 6.0, threads, 3, -127, -127)
        if pool_out:
            want = np.empty((batch, n), np.float32)
            _C.avgpool_static(s, float(np.float32(0.05) / np.float32(oh * ow)), want, *none, 1.0, -127, 0)
            want = want.reshape(batch, 1, 1, n)
        else:
            want = np.empty((batch, oh, ow, 5), np.float32)
            _C.conv2d_static(s, pc, sc, xwc, None, None, want, mc, (1, 1), (1, 1), (0, 0), (1, 1), 1, *none, 1.0,
                             threads, -127, 0)
    finally:
        _C.set_isa(previous)
    assert got.shape == want.shape
    assert np.array_equal(got, want)
