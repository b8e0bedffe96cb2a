"""StaticInt8Model: the whole static int8 program in one C call (static/program.py,
csrc/static_program.c) gives bit-identical outputs to the node-by-node path, at every ISA
level and thread count; what it can't run goes node by node; hostile programs are refused."""
import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant import _C
from mono_quant.calibration import CalibrationWarning
from mono_quant.static.program import StaticInt8Model, compile_program
from static_helpers import assert_loads_as_program, program_node as _node, quantized_static

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.conv2(self.conv1(x)) + self.short(x))


class ResNetLike(nn.Module):
    """One input channel (the im2col-fed first layer), residual stages, pool, linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b1, self.b2, self.b3 = Block(8, 8, 1), Block(8, 20, 2), Block(20, 36, 2)
        self.fc = nn.Linear(36, 7)

    def forward(self, x):
        y = self.b3(self.b2(self.b1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class MobileLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.pw(self.dw(self.stem(x)))), 1))


class ConvOut(nn.Module):
    """A float conv output (NCHW) as the model output."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(4, 12, 3, padding=1), nn.ReLU())
        self.b = nn.Conv2d(12, 5, 3, stride=2)

    def forward(self, x):
        return self.b(self.a(x))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(13, 32), nn.Linear(32, 32), nn.Linear(32, 3)

    def forward(self, x):
        h = torch.relu(self.l1(x))
        return self.l3(torch.relu(self.l2(h)) + h)


class WithFloatOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.b(torch.sigmoid(self.a(x)))



MODELS = {"resnet": (ResNetLike, (1, 15, 13)), "mobile": (MobileLike, (3, 12, 12)),
          "conv_out": (ConvOut, (4, 9, 11)), "mlp": (Mlp, (13,))}


def quantized(name, seed=0):
    cls, shape = MODELS[name]
    return quantized_static(cls, shape, seed), shape


def both_paths(model, x):
    model.run_as_program = False
    ref = model(x)
    model.run_as_program = True
    got = model(x)
    return ref, got


@pytest.fixture(scope="module", params=list(MODELS))
def compiled_model(request):
    model, shape = quantized(request.param)
    assert isinstance(model, StaticInt8Model)
    assert compile_program(model) is not None, "the whole program should run in one call"
    return model, shape


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_program_is_bit_identical_to_node_by_node(isa, compiled_model, batch, threads):
    model, shape = compiled_model
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
    torch.set_num_threads(threads)
    with torch.inference_mode():
        ref, got = both_paths(model, x)
    assert model._compiled, "the program ran"
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert torch.equal(got, ref)


def test_program_other_input_sizes_and_dtypes():
    model, shape = quantized("resnet")
    with torch.inference_mode():
        for size in [(1, 8, 8), (1, 1, 1), (1, 29, 3)]:  # any image size the convs take
            ref, got = both_paths(model, torch.randn(2, *size))
            assert torch.equal(got, ref)
        ref, got = both_paths(model, torch.randn(3, *shape, dtype=torch.float64))
        assert torch.equal(got, ref)
        ref, got = both_paths(model, torch.randn(3, 1, *shape[1:]).transpose(2, 3))  # non-contiguous
        assert torch.equal(got, ref)
        ref, got = both_paths(model, torch.randn(0, *shape))  # an empty batch
        assert got.shape == ref.shape == (0, 7)


def test_program_rejects_a_wrong_input_clearly():
    model, _ = quantized("resnet")
    with pytest.raises(ValueError, match="channel"):
        model(torch.randn(1, 3, 8, 8))


def test_float_ops_hooks_and_copies_take_the_right_path():
    model, _ = quantized("resnet")
    x = torch.randn(2, 1, 9, 9)
    seen = []
    handle = model.layers["fc"].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    ref = model(x)  # a hook on a layer: node by node, so the hook fires
    handle.remove()
    assert seen == [(2, 7)]
    assert torch.equal(model(x), ref)
    twin = copy.deepcopy(model)  # compiles its own program over its own buffers
    assert torch.equal(twin(x), ref)
    assert twin._compiled and twin._compiled is not model._compiled

    fmodel, shape = None, (3, 9, 9)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        fmodel = mq.quantize(WithFloatOp().eval(), "int8", activations="static",
                             calibration=torch.randn(100, *shape)).model
    assert compile_program(fmodel) is None
    with torch.inference_mode():
        out = fmodel(torch.randn(2, *shape))
    assert out.shape == (2, 4, 5, 5) and fmodel._compiled is False


def test_saved_and_loaded_model_runs_as_program(tmp_path):
    model, shape = quantized("mobile")
    assert_loads_as_program(model, torch.randn(3, *shape), tmp_path / "m.static.safetensors")


def test_hostile_programs_are_refused():
    quant = _node(0, -1, -1, 0, (4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    pool = _node(4, 0, -1, 1, (0,) * 13 + (1, 0))
    assert _C.static_program([quant, pool])  # a valid two-node program
    out = _C.static_program_run(_C.static_program([quant, pool]), np.ones((2, 4, 3, 3), np.float32))
    assert out.shape == (2, 1, 1, 4)
    with pytest.raises(TypeError):
        _C.static_program("not a list")
    with pytest.raises(TypeError):
        _C.static_program([quant])  # fewer than two nodes
    with pytest.raises(ValueError, match="first node"):
        _C.static_program([pool, quant])
    with pytest.raises(ValueError, match="value slots"):
        _C.static_program([quant, _node(4, 5, -1, 1, (0,) * 13 + (1, 0))])  # reads an unwritten slot
    with pytest.raises(ValueError, match="float output"):
        _C.static_program([quant, _node(4, 0, -1, 1)])  # the last node must be the float output
    with pytest.raises(ValueError, match="zero-points"):
        _C.static_program([_node(0, -1, -1, 0, (4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -128, 0, 0, 0)), pool])
    with pytest.raises(ValueError, match="inv_out_scale"):
        _C.static_program([_node(0, -1, -1, 0, floats=(0.0, 1.0, 0.0, 1.0, 1.0, 1.0)), pool])
    conv_ints = (4, 16, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0)
    good = (np.zeros(16 * 36, np.int8), np.zeros(16, np.int32), np.ones(16, np.float32), None)
    assert _C.static_program([quant, _node(1, 0, -1, 1, conv_ints, arrays=good)])
    for bad, exc in [((np.zeros(16 * 35, np.int8),) + good[1:], ValueError),       # packed too short
                     ((good[0].astype(np.uint8),) + good[1:], TypeError),          # wrong dtype
                     (good[:2] + (np.ones(32, np.float32)[::2], None), TypeError),  # not contiguous
                     (good[:3], TypeError)]:                                        # 3 arrays
        with pytest.raises(exc):
            _C.static_program([quant, _node(1, 0, -1, 1, conv_ints, arrays=bad)])
    with pytest.raises(ValueError, match="kernel"):
        _C.static_program([quant, _node(1, 0, -1, 1, (4, 16, 0, 3, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0), arrays=good)])
    prog = _C.static_program([quant, _node(1, 0, -1, 1, conv_ints, arrays=good)])
    with pytest.raises(ValueError, match="channel"):
        _C.static_program_run(prog, np.ones((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        _C.static_program_run(_C.static_program([quant, _node(1, 0, -1, 1, (4, 16, 3, 3, 1, 1, 0, 0, 1, 1, 0, 0, 0,
                                                                            1, 0), arrays=good)]),
                              np.ones((1, 4, 2, 2), np.float32))
    with pytest.raises(TypeError):
        _C.static_program_run(prog, np.ones((1, 4, 5, 5), np.float64))
    with pytest.raises(TypeError):
        _C.static_program_run("capsule?", np.ones((1, 4, 5, 5), np.float32))


def test_a_replaced_layer_rebuilds_the_program():
    model, shape = quantized("resnet", seed=0)
    other, _ = quantized("resnet", seed=3)  # other weights and scales, the same graph
    x = torch.randn(2, *shape)
    with torch.inference_mode():
        before = model(x)  # compiled from the first layers
        for name in list(model.layers):
            model.layers[name] = other.layers[name]
        ref, got = both_paths(model, x)
        assert torch.equal(got, ref) and not torch.equal(got, before)
        compiled = model._compiled
        model(x)
        assert model._compiled is compiled  # no rebuild while nothing changes
