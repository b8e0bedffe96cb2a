"""fp16 / bf16 Conv2d layers on the C kernel (formats/half_conv.py): which inputs take it (the
shape rule, per kernel level), the kernel's results in eager, autograd, torch.compile,
torch.export and ONNX, and torch's route for everything else.  Results are compared with
torch's conv on the widened weight within float32 rounding (another summation order: see
tests/kernels/test_half_conv.py for the bound)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.formats import half_conv
from mono_quant.formats.traced_forward import conv2d_forward
from mono_quant.kernels.half_conv import half_conv2d, half_conv2d_arrays, half_conv2d_raw
from conftest import SUPPORTED, at_isa


@pytest.fixture(autouse=True)
def winograd_on(monkeypatch):
    """The rules as on a CPU where Winograd pays (kernels.half_conv.WINOGRAD_ON_THIS_CPU: not Intel's): the
    tests below check the rules' logic; test_no_winograd_where_it_does_not_pay the vendor switch."""
    from mono_quant.kernels import half_conv as half_conv_kernels
    monkeypatch.setattr(half_conv_kernels, "WINOGRAD_ON_THIS_CPU", True)


def test_no_winograd_where_it_does_not_pay(monkeypatch):
    from mono_quant.kernels import half_conv as half_conv_kernels
    from mono_quant.kernels.half_conv import conv_algorithm
    shape, weight = (8, 64, 56, 56), (64, 64, 3, 3)  # ResNet-18's 3x3 at batch 8: Winograd where it pays
    assert conv_algorithm(shape, weight, (1, 1), (1, 1), (1, 1), 1, "avx512") == "winograd"
    monkeypatch.setattr(half_conv_kernels, "WINOGRAD_ON_THIS_CPU", False)  # an Intel CPU's
    from mono_quant.kernels import direct_conv
    monkeypatch.setattr(direct_conv, "WIDE_ANY_OUTPUTS_ON_THIS_CPU", False)  # (an Intel CPU's too)
    assert conv_algorithm(shape, weight, (1, 1), (1, 1), (1, 1), 1, "avx512") == "direct"
    _, q = quantized_conv("fp16", cin=64, cout=64, padding=1)
    x = torch.randn(8, 64, 56, 56)
    if "avx512" in SUPPORTED:
        with at_isa("avx512"):
            assert not half_conv.takes_half_conv(q, x, "avx512")  # past MAX_OUTPUTS: torch's conv


def quantized_conv(dtype, cin=32, cout=24, kernel=3, bias=True, **kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, bias=bias, **kw).eval()
    return conv, mq.quantize(nn.Sequential(conv), dtype=dtype).model[0]


def torch_route(q, x):
    """The layer through torch's conv on the weight widened to float32."""
    w = q._buffers["weight"].float()
    b = None if q.bias is None else q.bias.float()
    if q.padding_mode != "zeros":
        return F.conv2d(F.pad(x, q._reversed_padding_repeated_twice, mode=q.padding_mode), w, b, q.stride2d, 0,
                        q.dilation2d, q.groups)
    return F.conv2d(x, w, b, q.stride2d, q.padding2d, q.dilation2d, q.groups)


def close(y, ref, k):
    torch.testing.assert_close(y, ref, rtol=0, atol=(k + 2) * 2.0 ** -24 * float(ref.abs().max() + 1) * 4)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("kw", [dict(padding=1), dict(padding=2, stride=2, dilation=2),
                                dict(padding=1, padding_mode="reflect"), dict(padding=1, padding_mode="circular"),
                                dict(padding=(1, 0), groups=2, cout=32), dict(bias=False)],
                         ids=["pad", "stride-dilation", "reflect", "circular", "groups", "nobias"])
def test_small_images_run_the_kernel(isa, dtype, kw):
    _, q = quantized_conv(dtype, **kw)
    x = torch.randn(2, 32, 7, 6)
    takes = half_conv.takes_half_conv(q, x, isa)
    assert takes == (isa != "scalar")
    with torch.no_grad():
        y = q(x)
    assert y.dtype == torch.float32
    if takes:
        pad_x = x if q.padding_mode == "zeros" else F.pad(x, q._reversed_padding_repeated_twice, mode=q.padding_mode)
        padding = q.padding2d if q.padding_mode == "zeros" else (0, 0)
        assert torch.equal(y, half_conv2d(pad_x, q._buffers["weight"], q.bias, q.stride2d, padding, q.dilation2d,
                                          q.groups))
    close(y, torch_route(q, x), 32 // q.groups * 9)


def test_the_shape_rule(monkeypatch):
    _, q = quantized_conv("fp16", cin=16, cout=16, padding=1)  # k = 144, 16 output channels
    monkeypatch.setitem(half_conv.MAX_OUTPUTS, "avx512", 16 * 196)
    monkeypatch.setitem(half_conv.FULL_LANES, "avx512", 16)
    assert half_conv.takes_half_conv(q, torch.randn(1, 16, 14, 14), "avx512")       # 196 x 16 outputs
    assert half_conv.takes_half_conv(q, torch.randn(4, 16, 7, 7), "avx512")         # the same in 4 images
    assert not half_conv.takes_half_conv(q, torch.randn(1, 16, 15, 14), "avx512")   # 210 x 16
    assert not half_conv.takes_half_conv(q, torch.randn(1, 16, 7, 7), "scalar")     # no F16C: torch's op
    assert not half_conv.takes_half_conv(q, torch.randn(1, 16, 7, 7).double(), "avx512")
    assert not half_conv.takes_half_conv(q, torch.randn(1, 16, 7, 7).half(), "avx512")
    assert not half_conv.takes_half_conv(q, torch.randn(1, 16, 7, 7).bfloat16(), "avx512")
    assert not half_conv.takes_half_conv(q, torch.randn(16, 7, 7), "avx512")        # unbatched: torch
    assert not half_conv.takes_half_conv(q, torch.randn(0, 16, 7, 7), "avx512")
    monkeypatch.setitem(half_conv.MAX_OUTPUTS, "avx2", 16 * 100)
    assert half_conv.takes_half_conv(q, torch.randn(1, 16, 10, 10), "avx2")         # 100 x 16
    assert not half_conv.takes_half_conv(q, torch.randn(1, 16, 11, 10), "avx2")
    monkeypatch.setitem(half_conv.FULL_LANES, "avx512", 64)  # 16 of 64 lanes: a quarter of the outputs
    assert half_conv.takes_half_conv(q, torch.randn(1, 16, 7, 7), "avx512")          # 49 x 16 <= 196 x 16 / 4
    assert not half_conv.takes_half_conv(q, torch.randn(1, 16, 10, 10), "avx512")
    _, rgb = quantized_conv("fp16", cin=3, cout=16, padding=1)  # k = 27 = MIN_K
    assert half_conv.takes_half_conv(rgb, torch.randn(1, 3, 7, 7), "avx512")
    _, short = quantized_conv("fp16", cin=2, cout=16, padding=1)  # k = 18 < MIN_K
    assert not half_conv.takes_half_conv(short, torch.randn(1, 2, 7, 7), "avx512")
    _, narrow = quantized_conv("fp16", cin=16, cout=15, padding=1)  # 15 < MIN_GROUP_OUT output channels
    assert not half_conv.takes_half_conv(narrow, torch.randn(1, 16, 7, 7), "avx512")
    _, depthwise = quantized_conv("fp16", cin=32, cout=32, padding=1, groups=32)
    assert not half_conv.takes_half_conv(depthwise, torch.randn(1, 32, 7, 7), "avx512")
    _, same = quantized_conv("fp16", cin=16, cout=16, padding="same")
    assert not half_conv.takes_half_conv(same, torch.randn(1, 16, 7, 7), "avx512")


def test_the_algorithm_rule():
    """The im2col GEMM for few output pixels times a large weight, Winograd for large 3x3
    stride-1 convs that fit its buffers, the direct kernel elsewhere."""
    from mono_quant.kernels.half_conv import GEMM_MIN_K, conv_algorithm, uses_direct
    one = ((1, 1), (1, 1), (1, 1), 1, "avx512")  # (Winograd: WINOGRAD_LEVELS only)
    assert conv_algorithm((1, 512, 7, 7), (512, 512, 3, 3), *one) == "gemm"        # 49 rows x 2.4M weights
    assert conv_algorithm((1, 512, 14, 14), (512, 512, 3, 3), *one) == "direct"   # Winograd's buffers too big
    assert conv_algorithm((1, 256, 4, 4), (256, 256, 3, 3), *one) == "gemm"       # 16 rows x 590k
    assert conv_algorithm((1, 256, 7, 7), (256, 256, 3, 3), *one) == "direct"     # 49 rows x 590k, 29M MACs
    assert conv_algorithm((1, 16, 4, 4), (16, 16, 3, 3), *one) == "direct"        # a small weight
    for x_shape, w_shape in (((1, 64, 56, 56), (64, 64, 3, 3)), ((1, 128, 28, 28), (128, 128, 3, 3)),
                             ((1, 256, 14, 14), (256, 256, 3, 3))):              # ResNet-18's at batch 1
        assert conv_algorithm(x_shape, w_shape, *one) == "winograd"
    assert conv_algorithm((8, 64, 56, 56), (64, 64, 3, 3), *one) == "winograd"    # batch 8: image by image
    assert conv_algorithm((1, 64, 120, 120), (64, 64, 3, 3), *one) == "direct"    # one image past its buffers
    assert conv_algorithm((64, 64, 8, 8), (64, 64, 3, 3), *one) == "direct"       # small images
    assert conv_algorithm((64, 32, 16, 16), (32, 32, 3, 3), *one) == "direct"    # few channels
    assert conv_algorithm((64, 64, 16, 16), (64, 64, 3, 3), *one) == "direct"    # one block, small images
    assert conv_algorithm((64, 64, 32, 32), (64, 64, 3, 3), *one) == "direct"
    assert conv_algorithm((8, 64, 40, 40), (64, 64, 3, 3), *one) == "winograd"    # one block from 36x36
    assert conv_algorithm((64, 64, 16, 16), (128, 64, 3, 3), *one) == "winograd"  # two blocks from 14x14
    assert conv_algorithm((1, 64, 56, 56), (64, 64, 3, 3), (2, 2), (1, 1), (1, 1), 1, "avx512") == "direct"  # stride 2
    assert conv_algorithm((1, 64, 56, 56), (64, 32, 3, 3), (1, 1), (1, 1), (1, 1), 2, "avx512") == "direct"  # groups
    assert conv_algorithm((1, 64, 56, 56), (64, 64, 3, 3), *one[:-1], "avx2") == "direct"
    assert uses_direct(1, 1 << 24, GEMM_MIN_K - 1)                                 # a short reduction
    assert not uses_direct(1, 1 << 24, GEMM_MIN_K)
    # the AVX2 level's own pair: up to 56 rows of a weight of 2^17 or more and a reduction of 256 or more
    pointwise = ((1, 1), (0, 0), (1, 1), 1)
    assert conv_algorithm((1, 512, 7, 7), (1000, 512, 1, 1), *pointwise, "avx2") == "gemm"   # a classifier head
    assert conv_algorithm((1, 512, 7, 7), (1000, 512, 1, 1), *pointwise, "avx512") == "direct"
    assert conv_algorithm((1, 512, 8, 8), (1000, 512, 1, 1), *pointwise, "avx2") == "direct"  # 64 rows
    assert conv_algorithm((1, 160, 7, 7), (960, 160, 1, 1), *pointwise, "avx2") == "direct"   # a short reduction
    assert conv_algorithm((1, 256, 7, 7), (256, 256, 1, 1), *pointwise, "avx2") == "direct"   # 2^16 weights


def test_winograd_past_max_outputs_at_its_levels(monkeypatch):
    from mono_quant.kernels import direct_conv
    monkeypatch.setattr(direct_conv, "WIDE_ANY_OUTPUTS_ON_THIS_CPU", False)  # (this rule alone, as on Intel)
    _, q = quantized_conv("fp16", cin=64, cout=64, padding=1)
    x = torch.randn(1, 64, 56, 56)  # 200704 outputs > MAX_OUTPUTS["avx512"], Winograd's shape
    assert half_conv.takes_half_conv(q, x, "avx512")
    assert not half_conv.takes_half_conv(q, x, "avx2")
    from mono_quant.kernels import half_conv as half_conv_kernels
    monkeypatch.setattr(half_conv_kernels, "WINOGRAD_LEVELS", ())
    assert not half_conv.takes_half_conv(q, x, "avx512")


def test_a_large_weight_takes_the_direct_kernel_past_max_outputs(monkeypatch):
    """torch's route would widen a weight past SMALL_WEIGHT_ELEMENTS per call (AVX-512 only)."""
    from mono_quant.kernels import direct_conv
    monkeypatch.setattr(direct_conv, "WIDE_ANY_OUTPUTS_ON_THIS_CPU", False)  # (this rule alone, as on Intel)
    from mono_quant.formats import layer_cache
    _, q = quantized_conv("fp16", cin=64, cout=128, padding=1, stride=2)  # 73728 weights
    x = torch.randn(8, 64, 56, 56)  # 8 x 784 x 128 outputs: past MAX_OUTPUTS; stride 2: not Winograd
    assert half_conv.takes_half_conv(q, x, "avx512") and not half_conv.takes_half_conv(q, x, "avx2")
    monkeypatch.setattr(layer_cache, "SMALL_WEIGHT_ELEMENTS", 1 << 17)
    assert not half_conv.takes_half_conv(q, x, "avx512")


def test_the_gemm_past_max_outputs():
    """Few output pixels times a large weight (the im2col GEMM streams the 16-bit weight once)."""
    _, q = quantized_conv("fp16", cin=512, cout=512, padding=1)
    x = torch.randn(1, 512, 7, 7)  # 25088 outputs > MAX_OUTPUTS["avx2"]
    assert half_conv.takes_half_conv(q, x, "avx2") and half_conv.takes_half_conv(q, x, "avx512")
    assert not half_conv.takes_half_conv(q, x, "scalar")
    assert not half_conv.takes_half_conv(q, torch.randn(1, 512, 12, 12), "avx2")  # 144 rows: the direct kernel


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_torchs_route_outside_the_rule(isa, dtype):
    """Large images (and other input dtypes) keep torch's conv on the widened weight: its exact result."""
    _, q = quantized_conv(dtype, padding=1)
    x = torch.randn(1, 32, 120, 120)  # 14400 x 24 outputs: past MAX_OUTPUTS, and past Winograd's buffers
    assert not half_conv.takes_half_conv(q, x, isa)
    with torch.no_grad():
        assert torch.equal(q(x), torch_route(q, x))
        xd = torch.randn(1, 32, 5, 5, dtype=torch.float64)
        assert q(xd).dtype == torch.float64


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_autograd_reaches_the_input_and_bias(dtype):
    conv, q = quantized_conv(dtype, padding=1, stride=2)
    q.bias.requires_grad_(True)  # (quantize() leaves it frozen; fine-tuning it is allowed)
    x = torch.randn(1, 32, 9, 9)
    assert half_conv.takes_half_conv(q, x, "avx512")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = q(xa)
    w = q._buffers["weight"].float()
    yb = F.conv2d(xb, w, q.bias, 2, 1)
    grad = torch.randn_like(yb)
    ya.backward(grad)
    xb_grad, bias_grad = torch.autograd.grad(yb, (xb, q.bias), grad)
    torch.testing.assert_close(xa.grad, xb_grad)
    torch.testing.assert_close(q.bias.grad, bias_grad)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_traced_forward_is_the_eager_result(isa, dtype):
    _, q = quantized_conv(dtype, padding=1)
    x = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        assert torch.equal(conv2d_forward(q, x), q(x))


def test_compile_and_export_take_the_op():
    _, q = quantized_conv("fp16", padding=1)
    model = nn.Sequential(q, nn.ReLU()).eval()
    x = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        want = model(x)
        assert torch.equal(torch.compile(model)(x), want)
    program = torch.export.export(model, (x,))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert torch.ops.mono_quant.half_conv2d.default in targets
    with torch.no_grad():
        assert torch.equal(program.module()(x), want)


@pytest.mark.skipif("avx512" not in SUPPORTED, reason="Winograd runs at the AVX-512 level only (WINOGRAD_LEVELS)")
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_a_winograd_layer_in_eager_traced_and_compiled_forward(dtype):
    """A large 3x3 conv (Winograd at AVX-512): the same bits through the op (autograd,
    compile, export take it) as in eager, torch's result within Winograd's rounding."""
    from mono_quant.kernels.half_conv import conv_algorithm
    _, q = quantized_conv(dtype, cin=64, cout=128, padding=1)
    x = torch.randn(1, 64, 32, 32)
    assert conv_algorithm(x.shape, q._buffers["weight"].shape, (1, 1), (1, 1), (1, 1), 1, "avx512") == "winograd"
    assert half_conv.takes_half_conv(q, x, "avx512")
    with torch.no_grad(), at_isa("avx512"):
        y = q(x)
        arrays = half_conv2d_arrays(q._buffers["weight"], q.bias)
        assert torch.equal(y, half_conv2d_raw(x, *arrays, (1, 1), (1, 1), (1, 1), 1, algorithm="winograd"))
        assert torch.equal(conv2d_forward(q, x), y)
        assert torch.equal(torch.compile(q)(x), y)
    close(y, torch_route(q, x), 4 * 64 * 9)
    xa = x.clone().requires_grad_()
    ya = q(xa)
    ya.sum().backward()
    grad = torch.nn.grad.conv2d_input(x.shape, q._buffers["weight"].float(), torch.ones_like(ya), 1, 1)
    torch.testing.assert_close(xa.grad, grad)


@pytest.mark.skipif("avx2" not in SUPPORTED, reason="needs an AVX2 CPU")
def test_the_avx2_level_runs_the_direct_kernel_where_winograd_would_fit(monkeypatch):
    """WINOGRAD_LEVELS holds for a conv within MAX_OUTPUTS too, eager and through the op alike."""
    from mono_quant.kernels import half_conv as half_conv_kernels
    # (within MAX_OUTPUTS["avx2"] only one block of output channels fits on 14x14: its side rule off)
    monkeypatch.setattr(half_conv_kernels, "WINOGRAD_ONE_BLOCK_MIN_SIDE", half_conv_kernels.WINOGRAD_MIN_SIDE)
    _, q = quantized_conv("fp16", cin=512, cout=64, padding=1)
    x = torch.randn(1, 512, 14, 14)  # 12544 outputs: within MAX_OUTPUTS["avx2"]
    assert half_conv.layer_algorithm(q, x, "avx2") == "direct"
    assert half_conv.layer_algorithm(q, x, "avx512") == "winograd"
    arrays = half_conv2d_arrays(q._buffers["weight"], q.bias)
    with torch.no_grad(), at_isa("avx2"):
        assert half_conv.takes_half_conv(q, x, "avx2")
        want = half_conv2d_raw(x, *arrays, (1, 1), (1, 1), (1, 1), 1, algorithm="direct")
        assert torch.equal(q(x), want)
        assert torch.equal(conv2d_forward(q, x), want)  # the op (compile, export)


def test_a_padding_far_past_the_image_takes_the_gemm_not_a_padded_copy(isa):
    """The direct kernel would copy the zero-padded image (200 GB here): the GEMM runs it."""
    conv, q = quantized_conv("fp16", cin=32, cout=16, kernel=1, stride=20000, padding=20000)
    x = torch.randn(1, 32, 1, 1)
    assert half_conv.takes_half_conv(q, x, isa) == (isa != "scalar")
    assert half_conv.layer_algorithm(q, x, isa) == "gemm"
    with torch.no_grad():
        y = q(x)
        assert y.shape == conv(x).shape == (1, 16, 3, 3)
        close(y, torch_route(q, x), 32)
        assert torch.equal(conv2d_forward(q, x), y)


def test_the_direct_kernel_keeps_convs_whose_padded_copy_is_small():
    from mono_quant.kernels.half_conv import DIRECT_PAD_FACTOR, conv_algorithm, direct_pad_fits
    one = ((1, 1), (1, 1), (1, 1), 1)
    assert conv_algorithm((1, 16, 2, 2), (16, 16, 3, 3), *one, "avx512") == "direct"   # 16 -> 4 x 4 floats
    assert conv_algorithm((8, 32, 7, 7), (64, 32, 3, 3), *one, "avx512") == "direct"
    assert conv_algorithm((1, 32, 1, 1), (16, 32, 1, 1), (2000, 2000), (2000, 2000), (1, 1), 1, "avx2") == "gemm"
    # past DIRECT_PAD_FREE, the factor decides: 1 x 64 x 130 x 130 floats against 64 + 16 x 3 x 3
    assert not direct_pad_fits((1, 64, 1, 1), 16 * 9, (65, 65))
    assert direct_pad_fits((1, 64, 128, 128), 64 * 130 * 130, (1, 1))
    big = 1 << 22
    assert direct_pad_fits((1, 1, 1, big), DIRECT_PAD_FACTOR * 3 * big, (1, 0))
    assert not direct_pad_fits((1, 1, 1, big), 0, (2, 0))


def test_bf16_activations_take_torchs_conv_in_bf16():
    _, q = quantized_conv("bf16", cin=64, cout=64, padding=1)
    x = torch.randn(1, 64, 14, 14)
    assert not half_conv.takes_half_conv(q, x.bfloat16(), "avx512")
    with torch.no_grad():
        y = q(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), torch_route(q, x.bfloat16().float()), rtol=2e-2, atol=5e-2)


def test_export_with_a_dynamic_batch_takes_torchs_conv():
    """Symbolic sizes never reach the rows rule (it would guard the batch to a range): torch's conv."""
    _, q = quantized_conv("fp16", padding=1)
    model = nn.Sequential(q, nn.ReLU()).eval()
    x = torch.randn(2, 32, 6, 6)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (x,), dynamic_shapes={"input": {0: batch}})
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert torch.ops.mono_quant.half_conv2d.default not in targets
    for n in (1, 5, 40):
        xn = torch.randn(n, 32, 6, 6)
        with torch.no_grad():
            close(program.module()(xn), model(xn), 32 * 9)


def test_save_load_keeps_the_route(tmp_path):
    conv, q = quantized_conv("bf16", padding=1)
    model = nn.Sequential(q)
    path = tmp_path / "m.mq.safetensors"
    mq.save(model, path)
    loaded = mq.load(path, model=nn.Sequential(nn.Conv2d(32, 24, 3, padding=1)))
    x = torch.randn(1, 32, 5, 5)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    _, q = quantized_conv("fp16", padding=1, stride=2)
    model = nn.Sequential(q, nn.ReLU()).eval()
    x = torch.randn(1, 32, 9, 9)
    assert half_conv.takes_half_conv(q, x, "avx512")
    path = mq.export_onnx(model, x, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path))
    y = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        close(torch.from_numpy(y), model(x), 32 * 9)


@pytest.mark.parametrize("image", [5, 120], ids=["kernel-route", "torch-route"])
def test_weight_and_bias_changes_are_seen(image):
    """The per-module memo of each route's arguments notices in-place writes and replaced tensors."""
    _, q = quantized_conv("fp16", padding=1)
    x = torch.randn(1, 32, image, image)
    with torch.no_grad():
        q(x)
        q._buffers["weight"].mul_(2)
        torch.testing.assert_close(q(x), torch_route(q, x), rtol=1e-5, atol=1e-4)
        q.bias.add_(1)
        torch.testing.assert_close(q(x), torch_route(q, x), rtol=1e-5, atol=1e-4)
        q.register_buffer("weight", torch.zeros_like(q._buffers["weight"]))
        assert torch.equal(q(x), q.bias.view(1, -1, 1, 1).expand_as(q(x)))


@pytest.mark.skipif("avx512" not in SUPPORTED, reason="the wide-conv rule is the AVX-512 level's")
@pytest.mark.parametrize("dtype", ["fp16", "int8", "int4"])
def test_wide_convs_take_the_direct_kernel_at_any_output_count_off_intel(dtype, monkeypatch):
    """direct_conv.wide_any_outputs: on CPUs other than Intel's, at AVX-512, a conv of >= 64 output
    channels runs the C kernel past MAX_OUTPUTS (eager and the traced op ask the same functions);
    fewer channels keep the limits; an Intel CPU keeps them for every conv."""
    from mono_quant.kernels import direct_conv
    monkeypatch.setattr(direct_conv, "WIDE_ANY_OUTPUTS_ON_THIS_CPU", True)
    kw = dict(activations=None) if dtype == "int8" else {}
    wide = mq.quantize(nn.Sequential(nn.Conv2d(32, 64, 3, padding=1)), dtype=dtype, **kw)[0][0]
    narrow = mq.quantize(nn.Sequential(nn.Conv2d(32, 32, 3, padding=1)), dtype=dtype, **kw)[0][0]
    x = torch.randn(64, 32, 16, 16)  # 1M outputs for the wide conv: past every MAX_OUTPUTS
    takes = ((lambda q: half_conv.takes_half_conv(q, x, "avx512")) if dtype == "fp16"
             else (lambda q: q._direct_fits(x, "avx512")))
    assert takes(wide) and not takes(narrow)
    if dtype != "fp16":
        assert not wide._direct_fits(x[:0], "avx512")  # an empty batch: no outputs, torch's conv as before
    assert not (wide._direct_fits(x, "avx2") if dtype != "fp16" else half_conv.takes_half_conv(wide, x, "avx2"))
    monkeypatch.setattr(direct_conv, "WIDE_ANY_OUTPUTS_ON_THIS_CPU", False)  # an Intel CPU's
    assert not takes(wide)
    monkeypatch.setattr(direct_conv, "WIDE_ANY_OUTPUTS_ON_THIS_CPU", True)
    with torch.no_grad(), at_isa("avx512"):
        y = wide(x)
        assert torch.equal(conv2d_forward(wide, x), y)  # the traced forward takes the same route
    torch.testing.assert_close(y, nn.functional.conv2d(x, wide.dequantized_weight() if dtype != "fp16" else
                                                       wide._buffers["weight"].float(), wide.bias, 1, 1),
                               rtol=1e-4, atol=1e-4)
