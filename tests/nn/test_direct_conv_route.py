"""Weight-only int8 and int4 Conv2d layers on the direct kernel (modules/conv.py ``_direct_fits``,
kernels/direct_conv.py): which inputs take it (small outputs, a reduction of at least MIN_K, a
float32 input and bias, zero padding), its results against torch's conv of the dequantized
weight (float32 rounding of another summation order), the kept panels following every change of
the layer, the per-call panels of a large weight, and torch's route everywhere else."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.formats import layer_cache
from mono_quant.formats.traced_forward import conv2d_forward
from mono_quant.kernels import direct_conv
from mono_quant.kernels.direct_conv import direct_conv2d_reference
from mono_quant.modules import conv as conv_module


def _layer(dtype="int8", cin=32, cout=24, kernel=3, bias=True, seed=0, granularity="per_channel", **kw):
    torch.manual_seed(seed)
    float_conv = nn.Conv2d(cin, cout, kernel, bias=bias, **kw).eval()
    options = dict(activations=None, granularity=granularity) if dtype == "int8" else dict(group_size=32)
    return mq.quantize(nn.Sequential(float_conv), dtype=dtype, **options).model[0]


def _route(q):
    memo = conv_module._ROUTES.get(q)
    return None if memo is None else memo[5]


def _reference(q, x):
    return direct_conv2d_reference(x, q.dequantized_weight(torch.float32), q.bias, q.stride2d, q.padding2d,
                                   q.dilation2d, q.groups)


def _close(q, y, x):
    """Within float32 rounding of each output's sum |w x| (its reduction's length + 2 roundings)."""
    w = q.dequantized_weight(torch.float32).double()
    want = F.conv2d(x.double(), w, None if q.bias is None else q.bias.double(), q.stride2d, q.padding2d,
                    q.dilation2d, q.groups)
    mag = F.conv2d(x.double().abs(), w.abs(), None if q.bias is None else q.bias.double().abs(), q.stride2d,
                   q.padding2d, q.dilation2d, q.groups)
    k = w.shape[1] * w.shape[2] * w.shape[3]
    assert y.dtype == torch.float32 and y.shape == want.shape
    assert bool(((y.double() - want).abs() <= (k + 2) * 2.0 ** -24 * mag).all())


@pytest.mark.parametrize("dtype", ["int8", "int4", "int8-per-tensor"])
@pytest.mark.parametrize("kw", [dict(padding=1), dict(padding=2, stride=2, dilation=2), dict(padding=(1, 0)),
                                dict(groups=2, cout=32), dict(bias=False), dict(cout=70, padding=1)],
                         ids=["pad", "stride-dilation", "uneven-pad", "groups", "nobias", "block-tail"])
def test_small_convs_take_the_direct_kernel(isa, dtype, kw):
    per_tensor = dtype == "int8-per-tensor"
    q = _layer("int8" if per_tensor else dtype, granularity="per_tensor" if per_tensor else "per_channel", **kw)
    x = torch.randn(2, 32, 7, 6)
    with torch.no_grad():
        y = q(x)
        again = q(x)
        fresh = copy.deepcopy(q)(x)
        channels_last = q(x.contiguous(memory_format=torch.channels_last))
    assert _route(q) == ("direct" if isa != "scalar" else "format" if dtype == "int4" else "float")
    assert torch.equal(y, again) and torch.equal(y, fresh)
    if isa != "scalar":  # (torch's conv takes another algorithm for a channels-last input)
        assert torch.equal(y, channels_last)
    _close(q, y, x)


def test_the_same_bits_at_every_level_and_thread_count():
    from conftest import SUPPORTED, at_isa
    q = _layer(cout=40, padding=1)
    x = torch.randn(2, 32, 9, 9)  # 6480 outputs: the direct kernel at every SIMD level
    results = []
    for level in [level for level in SUPPORTED if level != "scalar"]:
        for threads in (1, 2):
            with at_isa(level), torch.no_grad():
                torch.set_num_threads(threads)
                conv_module._ROUTES.pop(q, None)
                results.append(q(x))
                assert _route(q) == "direct"
    torch.set_num_threads(2)
    assert all(torch.equal(results[0], y) for y in results)


def test_the_kept_panels_follow_the_layer(isa):
    if isa == "scalar":
        pytest.skip("the scalar level keeps torch's conv")
    q = _layer(padding=1)
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        y0 = q(x)
        q.weight_scale.mul_(2.0)  # in place: the panels are rebuilt
        y1 = q(x)
        assert torch.equal(y1, copy.deepcopy(q)(x)) and not torch.equal(y0, y1)
        q.bias.add_(1.0)
        y2 = q(x)
        assert torch.equal(y2, copy.deepcopy(q)(x)) and not torch.equal(y1, y2)
        q.bias = None
        y3 = q(x)
        assert torch.equal(y3, copy.deepcopy(q)(x))
    _close(q, y3, x)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_a_large_weight_fills_its_panels_per_call(isa, dtype, monkeypatch):
    if isa == "scalar":
        pytest.skip("the scalar level keeps torch's conv")
    q = _layer(dtype, padding=1)
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        kept = q(x)
        assert conv_module._ROUTES[q][7] is not None  # the panels kept
        monkeypatch.setattr(layer_cache, "SMALL_WEIGHT_ELEMENTS", 100)
        conv_module._ROUTES.pop(q)
        per_call = q(x)
    memo = conv_module._ROUTES[q]
    assert memo[5] == "direct" and memo[7] is None  # nothing kept, filled per call from the int8 / int4 codes
    assert torch.equal(kept, per_call)
    with torch.no_grad():
        assert torch.equal(conv2d_forward(q, x), per_call)  # the op's bits
        q.bias.add_(1.0)  # a change: the route's arrays are made again
        assert torch.equal(q(x), copy.deepcopy(q)(x))
        assert not torch.equal(q(x), per_call)


def test_the_rule(monkeypatch):
    from conftest import BEST, at_isa
    if BEST == "scalar":
        pytest.skip("no SIMD level")
    with at_isa(BEST):
        limit = direct_conv.MAX_OUTPUTS[BEST]
        q = _layer(cin=3, cout=16, padding=1)  # an RGB stem: 27 taps, on images of SHORT_K_MAX_PIXELS at most
        assert q._direct_fits(torch.randn(1, 3, 8, 8)) and q._direct_fits(torch.randn(1, 3, 16, 16))
        assert not q._direct_fits(torch.randn(1, 3, 17, 16))
        assert not _layer(cin=1, cout=16, padding=1)._direct_fits(torch.randn(1, 1, 8, 8))  # 9 taps: below MIN_K
        q = _layer(cin=16, cout=16, padding=1)
        side = int((limit // 16) ** 0.5)
        assert q._direct_fits(torch.randn(1, 16, side, side))
        assert not q._direct_fits(torch.randn(1, 16, side + 2, side + 2))  # past MAX_OUTPUTS
        assert not q._direct_fits(torch.randn(1, 16, 8, 8).half())  # float32 inputs only
        monkeypatch.setattr(layer_cache, "SMALL_WEIGHT_ELEMENTS", 100)  # a weight dequantized per call otherwise
        assert q._direct_fits(torch.randn(1, 16, side + 2, side + 2))
        assert not _layer(cin=16, cout=16, padding=1, padding_mode="reflect")._direct_fits(torch.randn(1, 16, 8, 8))
        assert not _layer(cin=16, cout=16, padding="same")._direct_fits(torch.randn(1, 16, 8, 8))
        monkeypatch.setattr(direct_conv, "MAX_OUTPUTS", {"scalar": 0, "avx2": 0, "avx512": 0})
        assert not q._direct_fits(torch.randn(1, 16, 4, 4))


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_few_output_channels_count_the_tiles_lanes(dtype):
    """A conv of fewer output channels per group than FEW_OUT_LANES counts its outputs as that many
    (the narrowest tile computes them all): a 2-class head conv takes the kernel at batch 1, torch's
    conv at batch 8 (the kernel ran it at 1.9-2.1x fp32's time there)."""
    q = _layer(dtype, cin=64, cout=2, padding=1)
    one, eight = torch.randn(1, 64, 16, 16), torch.randn(8, 64, 16, 16)  # 512 / 4096 outputs
    lanes = direct_conv.FEW_OUT_LANES
    for level in ("avx2", "avx512"):
        limit = direct_conv.MAX_OUTPUTS[level]
        assert q._direct_fits(one, level) == (512 * lanes <= 2 * limit)
        assert not q._direct_fits(eight, level)  # 4096 outputs x 8: past every limit
    wide = _layer(dtype, cin=64, cout=16, padding=1)  # a full tile: counted as they are
    assert wide._direct_fits(torch.randn(1, 64, 32, 32), "avx512")  # 16384 outputs
    with torch.no_grad():
        torch.testing.assert_close(q(eight), _reference(q, eight), rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_a_padding_far_past_the_image_keeps_torchs_conv_not_a_padded_copy(isa, dtype):
    """The direct kernel copies the image zero-padded (64 x 40001^2 floats, 410 GB, here): such a
    conv keeps torch's route (half_conv.direct_pad_fits, the fp16 route's rule), at every level."""
    q = _layer(dtype, cin=64, cout=16, kernel=1, stride=20000, padding=20000)
    x = torch.randn(1, 64, 1, 1)
    for level in ("avx2", "avx512"):
        assert not q._direct_fits(x, level)
        assert _layer(dtype, cin=64, cout=16, kernel=1, stride=2, padding=1)._direct_fits(x, level)  # 64 x 3 x 3
    with torch.no_grad():
        y = q(x)
        assert _route(q) == ("float" if dtype == "int8" else "format") and y.shape == (1, 16, 3, 3)
        torch.testing.assert_close(y, _reference(q, x), rtol=0, atol=1e-4)
        assert torch.equal(conv2d_forward(q, x), y)  # the traced forward asks the same rule


def test_a_changed_rule_is_seen_by_the_kept_route(isa, monkeypatch):
    if isa == "scalar":
        pytest.skip("the scalar level keeps torch's conv")
    q = _layer(padding=1)
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        q(x)
        assert _route(q) == "direct"
        monkeypatch.setattr(direct_conv, "MAX_OUTPUTS", {"scalar": 0, "avx2": 0, "avx512": 0})
        y = q(x)
    assert _route(q) == "float"
    torch.testing.assert_close(y, _reference(q, x), rtol=0, atol=1e-4)


def test_dynamic_layers_take_the_direct_kernel_only_where_int8_does_not_pay(isa):
    torch.manual_seed(0)
    q = mq.quantize(nn.Sequential(nn.Conv2d(32, 24, 3, padding=1)), dtype="int8").model[0]
    with torch.no_grad():
        q(torch.randn(1, 32, 8, 8))
    assert _route(q) == "packed"  # the int8 kernels
    stem = mq.quantize(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1)), dtype="int8").model[0]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        y = stem(x)
        assert _route(stem) == ("float" if isa == "scalar" else "direct")  # 27 taps: no int8, its weight in fp32
        assert torch.equal(conv2d_forward(stem, x), y)  # the traced forward: the same kernel and bits
    torch.testing.assert_close(y, _reference(stem, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_traced_forward_autograd_and_export_take_the_same_kernel(isa, dtype):
    q = _layer(dtype, padding=1)
    x = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        eager = q(x)
        assert torch.equal(conv2d_forward(q, x), eager)  # the ops: the same kernel, the same bits
    xg = x.clone().requires_grad_(True)
    y = q(xg)  # autograd: the traced forward
    assert torch.equal(y.detach(), eager)
    g = torch.randn_like(y)
    y.backward(g)
    want = torch.nn.grad.conv2d_input(x.shape, q.dequantized_weight(torch.float32), g, q.stride2d, q.padding2d,
                                      q.dilation2d, q.groups)
    torch.testing.assert_close(xg.grad, want, rtol=1e-5, atol=1e-5)
    program = torch.export.export(nn.Sequential(q), (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    op = "mono_quant.direct_conv2d_int8.default" if dtype == "int8" else "mono_quant.direct_conv2d.default"
    assert (op in targets) == (isa != "scalar")
    x2 = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        assert torch.equal(program.module()(x2), q(x2))  # follows its input, the eager bits


def test_compile_matches_eager():
    q = _layer(padding=1)
    torch._dynamo.reset()
    compiled = torch.compile(nn.Sequential(q), fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        assert torch.equal(compiled(x), q(x))


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_grouped_convs_of_narrow_groups_take_the_kernel_to_their_own_limit(dtype):
    """A grouped conv of at most GROUPED_MAX_OUT_CHANNELS channels per group (RegNet's group width 8, ResNeXt's
    4) takes the kernel up to grouped_max_outputs at the AVX2 level (torch's grouped conv of narrow groups:
    0.5-0.8x the kernel's speed there), to a lower limit at the AVX-512 level (16384 outputs: oneDNN's
    AVX-512 grouped conv is quicker); wider groups and dense convs keep MAX_OUTPUTS."""
    regnet = _layer(dtype, cin=208, cout=208, padding=1, groups=26)  # group width 8
    resnext = _layer(dtype, cin=128, cout=128, padding=1, groups=32)  # 4
    dense = _layer(dtype, cin=16, cout=16, padding=1)
    wide = _layer(dtype, cin=128, cout=128, padding=1, groups=4)  # 32
    assert direct_conv.grouped_max_outputs(26, 8, "avx2") == direct_conv.GROUPED_MAX_OUTPUTS["avx2"] >= 32768
    assert direct_conv.grouped_max_outputs(32, 4, "avx2") == direct_conv.GROUPED_NARROW_MAX_OUTPUTS["avx2"]
    assert direct_conv.grouped_max_outputs(1, 8, "avx2") == direct_conv.grouped_max_outputs(4, 32, "avx2") == 0
    assert direct_conv.grouped_max_outputs(26, 8, "avx512") == direct_conv.GROUPED_MAX_OUTPUTS["avx512"] == 16384
    assert direct_conv.grouped_max_outputs(32, 4, "avx512") == 16384 and direct_conv.grouped_max_outputs(26, 8, "scalar") == 0
    at_8x8 = torch.randn(1, 208, 8, 8)  # 13312 outputs: past MAX_OUTPUTS for 8 lanes (8192 x 8 / 16)
    assert regnet._direct_fits(at_8x8, "avx2")
    assert regnet._direct_fits(torch.randn(1, 208, 17, 17), "avx2") == (208 * 17 * 17 <= 65536)
    assert not regnet._direct_fits(torch.randn(1, 208, 18, 18), "avx2")  # 67392 outputs
    assert regnet._direct_fits(at_8x8, "avx512") and not regnet._direct_fits(at_8x8, "scalar")
    assert not regnet._direct_fits(torch.randn(1, 208, 9, 9), "avx512")  # 16848 outputs
    assert resnext._direct_fits(torch.randn(8, 128, 8, 8), "avx2")  # 65536 outputs at group width 4
    assert not resnext._direct_fits(torch.randn(8, 128, 8, 8), "avx512")
    assert resnext._direct_fits(torch.randn(2, 128, 8, 8), "avx512")  # 16384
    assert not dense._direct_fits(torch.randn(1, 16, 32, 32), "avx2")  # 16384 outputs of a dense conv
    assert not wide._direct_fits(torch.randn(1, 128, 12, 12), "avx2")  # 18432 outputs, 32 a group
    from conftest import SUPPORTED, at_isa
    if "avx2" in SUPPORTED:
        with at_isa("avx2"), torch.no_grad():
            y = regnet(at_8x8)
            assert _route(regnet) == "direct"
            _close(regnet, y, at_8x8)
            with pytest.MonkeyPatch.context() as patch:  # a changed rule is seen by the kept route
                patch.setattr(direct_conv, "GROUPED_MAX_OUTPUTS", {"avx2": 0})
                regnet(at_8x8)
                assert _route(regnet) != "direct"
            regnet(at_8x8)
            assert _route(regnet) == "direct"


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_pointwise_convs_of_few_pixels_take_torchs_conv_where_the_blas_is_avx512(dtype, monkeypatch):
    """On CPUs whose torch runs oneDNN's AVX-512 code (row_rules.BLAS_AVX512), a 1x1 stride-1 conv on at most
    POINTWISE_TORCH_MAX_PIXELS output pixels with a kept float weight runs torch's conv on that weight (fp32's
    own call, its bits), never the direct kernel; more pixels, a stride, padding, or a weight past the kept size
    keep the other routes.  The rule is asked per level, so both sides run on any host."""
    from mono_quant.formats import half_conv
    assert direct_conv.POINTWISE_TORCH_LEVELS == (("avx512",) if direct_conv.BLAS_AVX512 else ())
    monkeypatch.setattr(direct_conv, "POINTWISE_TORCH_LEVELS", ("avx512",))
    takes = direct_conv.pointwise_takes_torch
    assert takes((1, 1), (1, 1), (0, 0), 1, 64, "avx512") and not takes((1, 1), (1, 1), (0, 0), 1, 65, "avx512")
    assert not takes((1, 1), (2, 2), (0, 0), 1, 16, "avx512") and not takes((1, 1), (1, 1), (1, 1), 1, 16, "avx512")
    assert not takes((3, 3), (1, 1), (0, 0), 1, 16, "avx512") and not takes((1, 1), (1, 1), "valid", 1, 16, "avx512")
    assert not takes((1, 1), (1, 1), (0, 0), 1, 16, "avx2") and not takes((1, 1), (1, 1), (0, 0), 1, 16, "scalar")
    assert not takes((1, 1), (1, 1), (0, 0), 2, 16, "avx512")  # grouped: not measured, the direct kernel
    if dtype == "fp16":
        torch.manual_seed(0)
        q = mq.quantize(nn.Sequential(nn.Conv2d(208, 208, 1)).eval(), dtype="fp16").model[0]
        assert not half_conv.takes_half_conv(q, torch.randn(1, 208, 8, 8), "avx512")
        assert half_conv.takes_half_conv(q, torch.randn(1, 208, 9, 9), "avx512")
    else:
        q = _layer(dtype, cin=128, cout=128, kernel=1)
        assert not q._direct_fits(torch.randn(1, 128, 8, 8), "avx512")
        assert q._direct_fits(torch.randn(1, 128, 9, 9), "avx512") and q._direct_fits(torch.randn(1, 128, 8, 8), "avx2")
        large = _layer(dtype, cin=440, cout=440, kernel=1)  # past the kept size: no float copy to run torch's conv on
        assert large.weight_numel() > layer_cache.SMALL_WEIGHT_ELEMENTS
        assert large._direct_fits(torch.randn(1, 440, 4, 4), "avx512")
    from conftest import SUPPORTED, at_isa
    if "avx512" in SUPPORTED:
        x = torch.randn(1, q.in_channels, 8, 8)
        with at_isa("avx512"), torch.no_grad():
            y = q(x)
            w = q._buffers["weight"].float() if dtype == "fp16" else q.dequantized_weight(torch.float32)
            assert torch.equal(y, F.conv2d(x, w, q.bias))  # torch's conv on the kept weight: its bits
            monkeypatch.setattr(direct_conv, "POINTWISE_TORCH_LEVELS", ())  # a changed rule is seen by the kept route
            if dtype != "fp16":
                q(x)
                assert _route(q) == "direct"
