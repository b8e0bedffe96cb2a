"""INT8 matmul: packed layout, every ISA's kernels against the scalar
reference (exact integers), QuantizedLinear's two modes against fp32, and
the packed buffers through quantize(), state_dict, from_saved and copies."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant import _C, kernels, reference
from mono_quant.entries import quantize_state_dict_entry
from mono_quant.config import QuantConfig
from mono_quant.modules import QuantizedLinear
from mono_quant.packing import PACKED_BUFFERS, pack_int8_linear
from mono_quant import quantize_weight
from conftest import SUPPORTED, at_isa


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _acc(x_q, w_q, zp):
    """The C kernels' exact accumulators for int8 activations x_q and weight w_q."""
    packed, w_sum, has_m128 = kernels.pack_int8(w_q)
    return kernels.linear_int8(x_q, packed, w_sum, torch.ones(w_q.shape[0]), zp, None, w_q.shape[0], has_m128,
                               mode="int8_acc")


def _sqnr(ref, out):
    noise = (ref.double() - out.double()).pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(ref.double().pow(2).sum().item() / noise)


# ---- packed layout ----------------------------------------------------------------------------


def test_pack_layout_golden():
    w = torch.arange(-60, 60, dtype=torch.int8)[:3 * 5].reshape(3, 5)  # n=3, k=5 -> np=16, kp=8
    packed, w_sum, has_m128 = kernels.pack_int8(w)
    assert packed.shape == (16 * 8,) and w_sum.shape == (16,) and not has_m128
    view = packed.reshape(1, 2, 16, 4)  # [np/16][kp/4][16][4]
    for c in range(16):
        for g in range(2):
            for j in range(4):
                expect = int(w[c, g * 4 + j]) if c < 3 and g * 4 + j < 5 else 0
                assert int(view[0, g, c, j]) == expect
    assert w_sum[:3].tolist() == w.int().sum(1).tolist() and not w_sum[3:].any()
    assert kernels.pack_int8(torch.full((2, 3), -128, dtype=torch.int8))[2]


def test_pack_int8_linear_buffers():
    qw = quantize_weight(torch.randn(20, 9, generator=_gen(0)), symmetric=True)
    bufs = pack_int8_linear(qw)
    assert set(bufs) == set(PACKED_BUFFERS)
    assert bufs["weight_packed_info"].tolist() == [1, 20, 9, 0, 1]
    assert bufs["weight_packed"].numel() == 32 * 12
    with pytest.raises(ValueError):
        pack_int8_linear(quantize_weight(torch.randn(4, 4), dtype="uint8"))


# ---- kernels vs the exact integer reference, every ISA ------------------------------------------


@pytest.mark.parametrize("m", list(range(1, 18)) + [25])
def test_int8_acc_exact_all_m(kernel_isa, m):
    g = _gen(m)
    for n, k in [(1, 1), (17, 3), (33, 67), (16, 64), (18, 1024)]:  # 1024: rows padded to 1088 bytes
        w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
        x = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
        zp = torch.zeros(n, dtype=torch.int32)
        assert torch.equal(_acc(x, w, zp), reference.linear_int8(x, w, torch.ones(n), zp, mode="int8_acc"))


@pytest.mark.parametrize("n,k", [(15, 5), (50, 129), (64, 256)])
def test_int8_acc_exact_asymmetric_weights(kernel_isa, n, k):
    """Full-range weights (-128 included: AVX2 takes its exact path) and zero-points."""
    g = _gen(n * k)
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    w[0, 0] = -128
    x = torch.randint(-127, 128, (7, k), generator=g, dtype=torch.int8)
    zp = torch.randint(-128, 128, (n,), generator=g, dtype=torch.int32)
    assert torch.equal(_acc(x, w, zp), reference.linear_int8(x, w, torch.ones(n), zp, mode="int8_acc"))


@pytest.mark.parametrize("rows", [5, 29])
def test_int8_acc_extremes_no_saturation(kernel_isa, rows):
    """Every maddubs pair at its largest (|x| = |w| = 127, same signs): the
    AVX2 sign trick's int16 pairs (2*127*127 = 32258) must not saturate, in
    the few-row tile and the 12-row one (29 rows: 12 + 12 + 5)."""
    k, n = 1024, 24
    x = torch.full((5, k), -127, dtype=torch.int8)
    x[1] = 127
    x[2, ::2] = 127
    x[3] = 0  # an all-zero row
    x = x.repeat((rows + 4) // 5, 1)[:rows]
    w = torch.full((n, k), -127, dtype=torch.int8)
    w[1] = 127
    w[2, 1::2] = 127
    zp = torch.zeros(n, dtype=torch.int32)
    got = _acc(x, w, zp)
    assert torch.equal(got, reference.linear_int8(x, w, torch.ones(n), zp, mode="int8_acc"))
    assert int(got[0, 0]) == 127 * 127 * k and int(got[3].abs().max()) == 0
    # -128 weights against +-127 activations, with and without zero-points
    w128 = torch.full((n, k), -128, dtype=torch.int8)
    w128[1] = 127
    for zp in (torch.zeros(n, dtype=torch.int32), torch.full((n,), -128, dtype=torch.int32)):
        assert torch.equal(_acc(x, w128, zp), reference.linear_int8(x, w128, torch.ones(n), zp, mode="int8_acc"))


@pytest.mark.parametrize("nthreads", [1, 2])
def test_int8_acc_exact_row_blocks(kernel_isa, nthreads):
    """Many rows times a small weight: linear.c takes the rows in L2-sized blocks
    (kp = 3004 gives 40-row blocks: 97 = 40 + 40 + 17) under every panel."""
    g = _gen(77)
    m, n, k = 97, 40, 3001
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    x = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    zp = torch.randint(-128, 128, (n,), generator=g, dtype=torch.int32)
    packed, w_sum, has_m128 = kernels.pack_int8(w)
    got = torch.from_numpy(_C.linear_int8(x.numpy(), packed.numpy(), w_sum.numpy(), torch.ones(n).numpy(), zp.numpy(),
                                          None, n, has_m128, mode="int8_acc", nthreads=nthreads))
    assert torch.equal(got, reference.linear_int8(x, w, torch.ones(n), zp, mode="int8_acc"))


@pytest.mark.parametrize("k", [131, 1024])
@pytest.mark.parametrize("m", [1, 5, 6, 7, 8, 12, 13, 25])
def test_int8_acc_m128_weights_every_row_tile(kernel_isa, m, k):
    """-128 weights run in every SIMD kernel (AVX2 maddubs: |w| = 128 as uint8
    times +-127, pairs up to 2*128*127 = 32512) on each row-tile size and a
    column tail; int8 inputs holding -128 (the dynamic quantizers never give
    one) are exact too, in padded rows (k = 1024) as well."""
    g = _gen(100 + m)
    n = 17
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    w[::2, ::3] = -128
    x = torch.where(torch.rand(m, k, generator=g) < 0.5, 127, -127).to(torch.int8)
    x[0, :7] = torch.randint(-127, 128, (7,), generator=g, dtype=torch.int8)
    for zp in (torch.zeros(n, dtype=torch.int32), torch.randint(-128, 128, (n,), generator=g, dtype=torch.int32)):
        assert torch.equal(_acc(x, w, zp), reference.linear_int8(x, w, torch.ones(n), zp, mode="int8_acc"))
        x128 = x.clone()
        x128[m // 2, 3] = -128
        assert torch.equal(_acc(x128, w, zp), reference.linear_int8(x128, w, torch.ones(n), zp, mode="int8_acc"))


@pytest.mark.parametrize("m,k", [(9, 70), (29, 1021), (13, 2048)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dynamic_bit_exact_vs_reference(kernel_isa, dtype, m, k):
    """The float outputs follow one fixed fp32 formula: equal to the pure-torch twin bit for bit
    (kp = 1024 and 2048: quantized rows kp + 64 apart, linear.c's mq_x_row_stride)."""
    g = _gen(3)
    n = 37
    qw = quantize_weight(torch.randn(n, k, generator=g), symmetric=True)
    x = torch.randn(m, k, generator=g).to(dtype)
    x[4] = 0  # all-zero row
    bias = torch.randn(n, generator=g)
    bufs = pack_int8_linear(qw)
    y = kernels.linear_int8(x, bufs["weight_packed"], bufs["weight_colsum"], qw.scale, qw.zero_point, bias, n,
                            False)
    ref = reference.linear_int8(x.float(), qw.qdata, qw.scale, qw.zero_point, bias)
    assert torch.equal(y, ref)
    assert torch.equal(y[4], bias)


def test_dynamic_asymmetric_weights_close_to_reference(kernel_isa):
    g = _gen(4)
    n, k = 40, 33
    qw = quantize_weight(torch.randn(n, k, generator=g) + 0.3, symmetric=False)
    assert qw.zero_point.abs().sum() > 0
    x = torch.randn(6, k, generator=g)
    bufs = pack_int8_linear(qw)
    y = kernels.linear_int8(x, bufs["weight_packed"], bufs["weight_colsum"], qw.scale, qw.zero_point, None, n,
                            bool(bufs["weight_packed_info"][3]))
    assert torch.equal(y, reference.linear_int8(x, qw.qdata, qw.scale, qw.zero_point))


@pytest.mark.parametrize("symmetric", [True, False])
def test_weight_only_matches_dequantized(kernel_isa, symmetric):
    g = _gen(5)
    n, k = 45, 131
    qw = quantize_weight(torch.randn(n, k, generator=g), symmetric=symmetric)
    bias = torch.randn(n, generator=g)
    bufs = pack_int8_linear(qw)
    for m in (1, 2, 7):
        x = torch.randn(m, k, generator=g)
        y = kernels.linear_int8(x, bufs["weight_packed"], bufs["weight_colsum"], qw.scale, qw.zero_point, bias, n,
                                False, mode="weight_only")
        ref = x.double() @ qw.dequantize().double().T + bias.double()
        assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("n", [1, 7, 9, 16, 35])
def test_weight_only_panel_tails(kernel_isa, symmetric, n):
    """Every row count's tiles (one row over a whole 16-channel panel, pairs of rows over
    8-channel halves) on a last panel of fewer than 8 or 16 channels, K not a multiple of 4."""
    g = _gen(12)
    k = 70
    qw = quantize_weight(torch.randn(n, k, generator=g) + (0.0 if symmetric else 0.4), symmetric=symmetric)
    bias = torch.randn(n, generator=g)
    bufs = pack_int8_linear(qw)
    for m in (1, 3, 4):
        x = torch.randn(m, k, generator=g)
        y = kernels.linear_int8(x, bufs["weight_packed"], bufs["weight_colsum"], qw.scale, qw.zero_point, bias, n,
                                False, mode="weight_only")
        ref = x.double() @ qw.dequantize().double().T + bias.double()
        assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_simd_equals_scalar_dynamic():
    """Each SIMD level gives the scalar reference's bits (same shapes, same inputs)."""
    g = _gen(6)
    qw = quantize_weight(torch.randn(70, 300, generator=g), symmetric=True)
    bufs = pack_int8_linear(qw)
    x = torch.randn(13, 300, generator=g)
    outs = []
    for level in SUPPORTED:
        with at_isa(level):
            outs.append(kernels.linear_int8(x, bufs["weight_packed"], bufs["weight_colsum"], qw.scale,
                                            qw.zero_point, None, 70, False))
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_nonfinite_row_gives_nan_row():
    qw = quantize_weight(torch.randn(8, 16, generator=_gen(7)), symmetric=True)
    bufs = pack_int8_linear(qw)
    x = torch.randn(3, 16, generator=_gen(8))
    x[1, 5] = float("inf")
    y = kernels.linear_int8(x, bufs["weight_packed"], bufs["weight_colsum"], qw.scale, qw.zero_point, None, 8, False)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all()


def test_linear_int8_argument_errors():
    qw = quantize_weight(torch.randn(8, 16), symmetric=True)
    b = pack_int8_linear(qw)
    args = (b["weight_packed"], b["weight_colsum"], qw.scale, qw.zero_point, None, 8, False)
    with pytest.raises(ValueError, match="packed"):
        kernels.linear_int8(torch.randn(2, 12), *args)
    with pytest.raises(ValueError, match="w_scale"):
        kernels.linear_int8(torch.randn(2, 16), b["weight_packed"], b["weight_colsum"], qw.scale[:3],
                            qw.zero_point, None, 8, False)
    with pytest.raises(ValueError, match="mode"):
        kernels.linear_int8(torch.randn(2, 16), *args, mode="static")
    with pytest.raises(TypeError):
        kernels.linear_int8(torch.randn(2, 16).double(), *args)
    with pytest.raises(ValueError, match="in_features"):
        _C.linear_int8(torch.zeros(1, 40000).numpy(), b["weight_packed"].numpy(), b["weight_colsum"].numpy(),
                       qw.scale.numpy(), qw.zero_point.numpy(), None, 8, False)


# ---- QuantizedLinear ----------------------------------------------------------------------------


def _layer(seed=0, n=96, k=160, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias).eval()


def test_module_dynamic_sqnr_gaussian():
    lin = nn.Linear(512, 256).eval()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(256, 512, generator=_gen(9)))
    x = torch.randn(32, 512, generator=_gen(10))
    qmodel, _ = mq.quantize(lin)
    assert isinstance(qmodel, QuantizedLinear) and qmodel.activations == "dynamic"
    with torch.no_grad():
        assert _sqnr(lin(x), qmodel(x)) >= 30.0


def test_module_weight_only_matches_dequantized():
    lin = _layer(1)
    qmodel, _ = mq.quantize(lin, activations=None)
    assert qmodel.activations is None
    x = torch.randn(4, 5, 160, generator=_gen(11))
    with torch.no_grad():
        y = qmodel(x)
    ref = F.linear(x.double(), qmodel.dequantized_weight().double(), qmodel.bias.double())
    assert y.shape == (4, 5, 96)
    assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("activations", ["dynamic", None])
def test_module_shapes_dtypes_and_strides(activations):
    lin = _layer(2, n=33, k=48)
    qmodel, _ = mq.quantize(lin, activations=activations)
    base = torch.randn(48, 6, generator=_gen(12))
    x_t = base.T  # [6, 48], non-contiguous rows
    with torch.no_grad():
        y_t = qmodel(x_t)
        assert torch.equal(y_t, qmodel(x_t.contiguous()))
        y3 = qmodel(x_t.contiguous().reshape(2, 3, 48))
        assert torch.equal(y3.reshape(6, 33), y_t)
        for dtype in (torch.bfloat16, torch.float16):
            yd = qmodel(x_t.to(dtype))
            assert yd.dtype == dtype and _sqnr(lin(x_t), yd.float()) > 25
        y1 = qmodel(x_t[0])  # a single vector
        assert y1.shape == (33,)
        # inputs the kernels don't take fall back to torch (float64; autograd)
        assert qmodel(x_t.double()).dtype == torch.float64
    xg = x_t.clone().requires_grad_(True)
    qmodel(xg).sum().backward()
    assert xg.grad is not None


def test_module_paths_agree_and_persist():
    lin = _layer(3, n=40, k=72)
    qmodel, _ = mq.quantize(lin)
    sd = qmodel.state_dict()
    assert set(PACKED_BUFFERS) <= set(sd)
    # the state_dict path stores the very same packed tensors
    entry, layer, _ = quantize_state_dict_entry("weight", lin.weight, QuantConfig())
    assert "weight_qdata" not in sd and "weight_qdata" not in entry  # one copy of the weight: the packed one
    for name in ("weight_scale", "weight_zero_point") + PACKED_BUFFERS:
        assert torch.equal(entry[name], sd[name]), name
    assert layer.bytes_after == sum(t.numel() * t.element_size() for t in entry.values())
    # rebuild through the save/load protocol: bit-identical outputs
    own = {k: v for k, v in sd.items()}
    rebuilt = QuantizedLinear.from_saved(qmodel.init_kwargs(), qmodel.get_state_attrs(), own)
    x = torch.randn(5, 72, generator=_gen(13))
    with torch.no_grad():
        y = qmodel(x)
        assert torch.equal(rebuilt(x), y)
        assert torch.equal(copy.deepcopy(qmodel)(x), y)
        assert torch.equal(qmodel.to("cpu")(x), y)
    wo = QuantizedLinear.from_saved(qmodel.init_kwargs(), dict(qmodel.get_state_attrs(), activations=None), own)
    assert wo.activations is None
    # weight bytes count what is stored, the packed copy included
    assert qmodel.weight_nbytes() == sum(sd[n].numel() * sd[n].element_size() for n in sd if n.startswith("weight"))


def test_module_without_packed_buffers_falls_back():
    qmodel, _ = mq.quantize(_layer(4, n=20, k=24))
    # a module holding the plain int8 weight and no packed copy (as a non-packable layer does)
    sd = {k: v for k, v in qmodel.state_dict().items() if k not in PACKED_BUFFERS}
    sd["weight_qdata"] = qmodel.quantized_weight().qdata
    old = QuantizedLinear.from_saved(qmodel.init_kwargs(), qmodel.get_state_attrs(), sd)
    x = torch.randn(3, 24, generator=_gen(14))
    with torch.no_grad():
        ref = F.linear(x, qmodel.dequantized_weight(), qmodel.bias)
        assert torch.allclose(old(x), ref, rtol=1e-5, atol=1e-5)


def test_per_tensor_and_uint8_weights():
    lin = _layer(5, n=24, k=40)
    x = torch.randn(3, 40, generator=_gen(15))
    with torch.no_grad():
        ref = lin(x)
        per_tensor, _ = mq.quantize(lin, granularity="per_tensor")
        assert per_tensor.weight_packed is not None and _sqnr(ref, per_tensor(x)) > 25
        u8, _ = mq.quantize(lin, dtype="uint8")  # no int8 kernels: torch fallback
        assert getattr(u8, "weight_packed", None) is None and _sqnr(ref, u8(x)) > 25


def test_activations_option_validation(tmp_path):
    with pytest.raises(ValueError, match="activations"):
        mq.quantize(_layer(), activations="static")
    cfg_file = tmp_path / "mono_quant.toml"
    cfg_file.write_text('activations = "none"\n')
    qmodel, _ = mq.quantize(_layer(), config=cfg_file)
    assert qmodel.activations is None
    qmodel, _ = mq.quantize(_layer(), config=cfg_file, activations="dynamic")
    assert qmodel.activations == "dynamic"


def test_caller_model_untouched():
    lin = _layer(6)
    before = {k: v.clone() for k, v in lin.state_dict().items()}
    mq.quantize(lin)
    assert all(torch.equal(before[k], v) for k, v in lin.state_dict().items())


def test_tied_weights_share_packed_storage():
    a, b = nn.Linear(24, 24), nn.Linear(24, 24)
    b.weight = a.weight
    qa, qb = mq.quantize(nn.Sequential(a, b)).model
    assert qa.weight_packed is qb.weight_packed and qa.weight_scale is qb.weight_scale


def test_load_state_dict_updates_the_kernels():
    """The kernels' cached arguments follow in-place changes of the buffers."""
    q1, _ = mq.quantize(_layer(7, n=20, k=24))
    q2, _ = mq.quantize(_layer(8, n=20, k=24))
    x = torch.randn(2, 24, generator=_gen(16))
    with torch.no_grad():
        y1, y2 = q1(x), q2(x)
        assert not torch.equal(y1, y2)
        q1.load_state_dict(q2.state_dict())
        assert torch.equal(q1(x), y2)


@pytest.mark.parametrize("m,n", [(100, 40), (300, 17), (64, 130)])
def test_many_rows_few_panels_exact(kernel_isa, m, n):
    """Few output panels and many rows: the threads split the rows too; still the reference's bits."""
    g = _gen(m + n)
    qw = quantize_weight(torch.randn(n, 75, generator=g), symmetric=True)
    x = torch.randn(m, 75, generator=g)
    bufs = pack_int8_linear(qw)
    y = kernels.linear_int8(x, bufs["weight_packed"], bufs["weight_colsum"], qw.scale, qw.zero_point, None, n, False)
    assert torch.equal(y, reference.linear_int8(x, qw.qdata, qw.scale, qw.zero_point))


@pytest.mark.parametrize("gemv_rows", [0, 8])
def test_gemv_and_gemm_tiles_agree(kernel_isa, gemv_rows):
    """Either tile family (the GEMV/GEMM switch forced) gives the exact accumulators."""
    previous = _C.set_gemv_max_rows(gemv_rows)
    try:
        g = _gen(gemv_rows)
        w = torch.randint(-127, 128, (70, 203), generator=g, dtype=torch.int8)
        zp = torch.zeros(70, dtype=torch.int32)
        for m in range(1, 10):
            x = torch.randint(-127, 128, (m, 203), generator=g, dtype=torch.int8)
            assert torch.equal(_acc(x, w, zp), reference.linear_int8(x, w, torch.ones(70), zp, mode="int8_acc"))
    finally:
        _C.set_gemv_max_rows(previous)
    with pytest.raises(ValueError):
        _C.set_gemv_max_rows(9)


@pytest.mark.parametrize("mode", ["dynamic", "weight_only"])
def test_strided_and_broadcast_rows(kernel_isa, mode):
    """Row views (stride > in_features, or 0 for an expanded row) run without a copy and give the same bits."""
    qw = quantize_weight(torch.randn(20, 48, generator=_gen(18)), symmetric=True)
    b = pack_int8_linear(qw)
    args = (b["weight_packed"], b["weight_colsum"], qw.scale, qw.zero_point, None, 20, False)
    wide = torch.randn(6, 100, generator=_gen(19))
    for x in (wide[:, 10:58], wide[2, 10:58].expand(5, 48), wide[::2, 3:51]):
        assert torch.equal(kernels.linear_int8(x, *args, mode=mode), kernels.linear_int8(x.contiguous(), *args, mode=mode))


def test_storage_swaps_update_the_kernels():
    """share_memory_() and .data = ... move a buffer's memory: the kernels follow it."""
    q1, _ = mq.quantize(_layer(10, n=20, k=24))
    q2, _ = mq.quantize(_layer(11, n=20, k=24))
    x = torch.randn(2, 24, generator=_gen(20))
    with torch.no_grad():
        q1(x)
        q1.share_memory()
        y1 = q1(x)
        for name in ("weight_packed", "weight_colsum", "weight_scale", "bias"):
            getattr(q1, name).data = getattr(q2, name).clone()
        assert torch.equal(q1(x), q2(x)) and not torch.equal(q1(x), y1)


def test_concurrent_callers_get_the_same_results():
    """The GIL is released around the kernels: Python threads may run one module at once."""
    import threading

    q, _ = mq.quantize(_layer(12, n=300, k=512))
    xs = [torch.randn(40, 512, generator=_gen(30 + i)) for i in range(4)]
    with torch.no_grad():
        expected = [q(x) for x in xs]
    results = [None] * len(xs)

    def run(i):
        with torch.no_grad():
            for _ in range(5):
                results[i] = q(xs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, e) for r, e in zip(results, expected))


def test_inconsistent_packed_buffers_fall_back():
    """Buffers under the packed names that don't match their info (a subclass's own use
    of the name, a truncated file) are never run by the kernels: with the plain
    weight beside them the torch path runs; as the only copy, a clear error."""
    q, _ = mq.quantize(_layer(13, n=20, k=24))
    x = torch.randn(3, 24, generator=_gen(21))
    with torch.no_grad():
        ref = F.linear(x, q.dequantized_weight(), q.bias)
        q.register_buffer("weight_qdata", q.quantized_weight().qdata)
        q.register_buffer("weight_packed", q.weight_qdata.t().contiguous()[:-16])
        assert torch.allclose(q(x), ref, rtol=1e-5, atol=1e-5)
        del q._buffers["weight_qdata"]
        with pytest.raises(ValueError, match="packed int8 weight has"):
            q(x)


