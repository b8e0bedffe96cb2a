"""QuantizedConv2d keeps the route it chose per module (modules/conv.py, _route): every
change the route or its kept weight and bias depend on must give what a fresh copy of
the layer (no memo) gives, bit for bit."""
import copy

import pytest
import torch
from torch import nn

import mono_quant as mq


def _qconv(cin, cout, activations="dynamic"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1)).eval()
    # asymmetric weights: the im2col route's size rule (a symmetric 16->16 conv on 8x8 takes the
    # direct route, packed), so the float route stays covered here
    return mq.quantize(model, dtype="int8", activations=activations, symmetric=False).model[0]


def _same_as_fresh(q, x):
    with torch.no_grad():
        y = q(x)
        fresh = copy.deepcopy(q)(x)
    assert torch.equal(y, fresh)
    return y


@pytest.mark.parametrize("cin,cout", [(16, 16), (32, 64)])  # the float route, the packed route (at 16x16)
def test_shapes_dtypes_and_modes_rechoose(cin, cout):
    q = _qconv(cin, cout)
    for shape in [(1, cin, 8, 8), (2, cin, 16, 16), (1, cin, 8, 8), (1, cin, 5, 7)]:
        _same_as_fresh(q, torch.randn(shape))
    y16 = _same_as_fresh(q, torch.randn(1, cin, 8, 8).half())
    assert y16.dtype == torch.float16
    q.set_activations(None)
    _same_as_fresh(q, torch.randn(1, cin, 16, 16))
    q.set_activations("dynamic")
    _same_as_fresh(q, torch.randn(1, cin, 16, 16))


def test_bias_and_buffer_changes_are_seen():
    q = _qconv(16, 16)
    x = torch.randn(1, 16, 8, 8)
    y0 = _same_as_fresh(q, x)
    with torch.no_grad():
        q.bias.add_(1.0)  # in place
    y1 = _same_as_fresh(q, x)
    assert not torch.equal(y0, y1)
    q.bias = nn.Parameter(torch.zeros(16), requires_grad=False)  # replaced
    y2 = _same_as_fresh(q, x)
    q.bias.data = torch.full((16,), 2.0)  # storage swapped
    y3 = _same_as_fresh(q, x)
    assert not torch.equal(y2, y3)
    with torch.no_grad():
        q.weight_scale.mul_(2.0)  # a weight buffer in place: the kept float weight is rebuilt
    y4 = _same_as_fresh(q, x)
    assert not torch.equal(y3, y4)
    q.bias = None
    _same_as_fresh(q, x)


def test_size_rules_read_per_call(monkeypatch):
    from mono_quant.modules import conv as conv_module

    q = _qconv(16, 16)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        float_route = q(x)
        monkeypatch.setattr(conv_module, "DYNAMIC_MIN_MACS_PER_IMAGE", 0)  # now the int8 kernels
        packed_route = q(x)
    assert not torch.equal(float_route, packed_route)
    _same_as_fresh(q, x)


@pytest.mark.parametrize("float_layer,x", [
    (nn.Linear(64, 32, bias=False), torch.randn(4, 64)),
    (nn.Conv2d(16, 32, 3, padding=1, bias=False), torch.randn(2, 16, 12, 12)),
])
def test_a_bias_assigned_after_a_forward_is_used_on_the_next_call(float_layer, x):
    q = mq.quantize(nn.Sequential(float_layer), "int8").model[0]
    with torch.no_grad():
        y0 = q(x)  # the kernel arguments are cached without a bias
        q.bias = torch.ones(32)  # a plain tensor attribute (no bias Parameter was registered)
        y1 = q(x)
    shape = (1, 32) if x.dim() == 2 else (1, 32, 1, 1)
    assert torch.allclose(y1, y0 + torch.ones(shape), atol=1e-5)


# ---- formats without a packed int8 weight (int4): the small float route ---------------------------

def _qconv4(cin, cout, padding_mode="zeros"):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding_mode)).eval()
    return mq.quantize(model, dtype="int4", group_size=32).model[0]


def _same_as_format(q, x):
    # the route's fp32 call against the format's own conv2d (what the layer ran before the route)
    with torch.no_grad():
        y = q(x)
        want = q.format.conv2d(q, x)
    assert torch.equal(y, want)
    return y


def test_int4_small_conv_takes_fp32_call_with_the_format_bits(monkeypatch):
    from mono_quant.kernels import direct_conv
    from mono_quant.modules import conv
    # (the direct kernel off: its route, another summation order, is tests/nn/test_direct_conv_route.py's)
    monkeypatch.setattr(direct_conv, "MAX_OUTPUTS", {"scalar": 0, "avx2": 0, "avx512": 0})
    q = _qconv4(32, 32)
    x = torch.randn(1, 32, 8, 8)
    y0 = _same_as_format(q, x)
    route = conv._ROUTES.get(q)
    assert route is not None and route[4] is not None  # F.conv2d's argument list kept
    _same_as_format(q, torch.randn(2, 32, 5, 7))  # another shape: chosen again
    assert _same_as_format(q, x.half()).dtype == torch.float16  # not float32: the format's path
    with torch.no_grad():
        q.weight_scale.mul_(2.0)  # a weight buffer in place: the kept weight is rebuilt
    y1 = _same_as_format(q, x)
    assert not torch.equal(y0, y1)
    with torch.no_grad():
        q.bias.add_(1.0)
    y2 = _same_as_format(q, x)
    assert not torch.equal(y1, y2)
    q.bias = None
    _same_as_format(q, x)
    _same_as_fresh(q, x)


def test_int4_conv_float_route_only_where_it_applies(monkeypatch):
    from mono_quant.formats import layer_cache
    from mono_quant.kernels import direct_conv
    from mono_quant.modules import conv
    # (the direct kernel off: its routes are tests/nn/test_direct_conv_route.py's)
    monkeypatch.setattr(direct_conv, "MAX_OUTPUTS", {"scalar": 0, "avx2": 0, "avx512": 0})
    q = _qconv4(8, 8, padding_mode="reflect")  # conv_with pads first: the format's path
    _same_as_format(q, torch.randn(1, 8, 6, 6))
    assert conv._ROUTES.get(q) is None
    q = _qconv4(32, 32)
    saved = layer_cache.SMALL_WEIGHT_ELEMENTS
    layer_cache.SMALL_WEIGHT_ELEMENTS = 100  # a "large" weight: dequantized per call, nothing kept
    try:
        _same_as_format(q, torch.randn(1, 32, 8, 8))
        assert conv._ROUTES.get(q) is None
    finally:
        layer_cache.SMALL_WEIGHT_ELEMENTS = saved


@pytest.mark.parametrize("kwargs", [dict(dtype="int8", activations=None), dict(dtype="int4"), dict(dtype="int8")])
def test_a_changed_kernel_level_chooses_again(kwargs):
    """A route kept at one kernel level (the direct kernel of a small conv at AVX2 / AVX-512) is
    chosen again after set_isa: the layer then gives what a layer quantized at the new level gives."""
    from mono_quant.kernels.settings import ISA_LEVELS, SETTINGS
    best = ISA_LEVELS.index(SETTINGS.cpu_info()["best_isa"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1)).eval()
    x = torch.randn(1, 16, 8, 8)
    q = mq.quantize(model, **kwargs).model[0]
    with torch.no_grad():
        q(x)  # the route at the host's level
        for isa in ISA_LEVELS[:min(best, 1) + 1]:  # scalar, and avx2 where the CPU has it
            with SETTINGS.for_tests(isa=isa):
                fresh = mq.quantize(model, **kwargs).model[0]
                assert torch.equal(q(x), fresh(x)), isa
        assert torch.equal(q(x), mq.quantize(model, **kwargs).model[0](x))  # back at the host's level


def test_amx_switches_keep_the_route():
    """AMX plays no part in a conv's route: switching it (a benchmark's contender on the same model)
    keeps the route kept by the layer."""
    from mono_quant.kernels.settings import SETTINGS
    from mono_quant.modules import conv
    if not SETTINGS.amx:
        pytest.skip("AMX is not running here")
    q = _qconv(16, 16)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        q(x)
        kept = conv._ROUTES.get(q)
        with SETTINGS.for_tests(amx=False):
            q(x)
        q(x)
    assert conv._ROUTES.get(q) is kept


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("cin, cout, size, kept", [(16, 64, 31, "torch"), (48, 128, 9, "panels"),
                                                    (512, 1000, 1, "kernel")])
def test_a_half_conv_on_what_the_layer_keeps_skips_the_formats_memo_and_sees_changes(dtype, cin, cout, size, kept,
                                                                                       monkeypatch):
    # a small 1x1 fp16 / bf16 conv runs torch's conv on the kept float32 weight (a large image) or the direct
    # kernel on the kept panels (a small one), a large one the C kernels on its 16-bit weight: the route keeps
    # their arguments, so later calls skip the format's key and memo (~5-10 us a call)
    from mono_quant.formats import half_conv
    torch.manual_seed(0)
    q = mq.quantize(nn.Sequential(nn.Conv2d(cin, cout, 1)).eval(), dtype=dtype).model[0]
    x = torch.randn(1, cin, size, size)
    assert half_conv.kept_conv_route(q, x)[0] == kept
    y0 = _same_as_fresh(q, x)
    with torch.no_grad():
        want = nn.functional.conv2d(x, q._buffers["weight"].float(), q.bias.float())
        assert torch.equal(y0, want) if kept == "torch" else torch.allclose(y0, want, rtol=1e-4, atol=1e-4)
    calls = []
    monkeypatch.setattr(half_conv, "eager_half_conv", lambda *a: calls.append(a))  # (cast.py's name is bound)
    from mono_quant.formats import cast
    monkeypatch.setattr(cast, "eager_half_conv", lambda *a: calls.append(a))
    with torch.no_grad():
        assert torch.equal(q(x), y0) and not calls  # fp32's own call
        q.bias.add_(1.0)  # in place: the route is made again (and the format's conv asked once)
    monkeypatch.undo()
    y1 = _same_as_fresh(q, x)
    assert not torch.equal(y0, y1)
    with torch.no_grad():
        q._buffers["weight"].mul_(2)  # the stored 16-bit weight in place: its float copy is made again
    y2 = _same_as_fresh(q, x)
    assert not torch.equal(y1, y2)
    _same_as_fresh(q, torch.randn(2, cin, 9, 9))  # another shape
