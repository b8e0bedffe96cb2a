"""The one-call static int8 program runs channel concatenations (StaticCat: copied inputs and
requantized ones) and broadcasting adds (StaticBroadcastAdd: two activations, or one and a
constant) bit-identically to the node-by-node path, at every ISA level and thread count, after
save / load; hostile cat / broadcast-add nodes are refused."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from mono_quant import _C
from mono_quant.static import StaticBroadcastAdd, StaticCat
from mono_quant.static.program import StaticInt8Model, compile_program
from static_helpers import assert_loads_as_program, program_node as _node, quantized_static

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cbr(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DenseLike(nn.Module):
    """Dense blocks of odd widths; the stem's output feeds two concatenations, so one of them
    requantizes it (a producer outputs at one scale only)."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(1, 5)
        self.c1, self.c2, self.c4 = cbr(5, 7), cbr(12, 3), cbr(5, 4)
        self.c3, self.c5 = cbr(15, 9, 2), cbr(9, 9, 2)
        with torch.no_grad():
            self.c4[0].weight.mul_(8.0)  # cat_2's range is c4's, not the stem's: the scales of the cats differ
        self.fc = nn.Linear(9, 3)

    def forward(self, x):
        x = self.stem(x)
        a = torch.cat([x, self.c1(x)], 1)
        b = torch.cat([a, self.c2(a)], 1)
        c = torch.cat([x, self.c4(x)], 1)
        d = self.c3(b) + self.c5(c)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(d, 1), 1))


class BroadcastLike(nn.Module):
    """Squeeze-style broadcasting adds of activations, both orders, and a per-channel constant."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 11), cbr(11, 6)
        self.register_buffer("shift", torch.linspace(-0.5, 0.7, 11).reshape(11, 1, 1))
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = self.a(x)
        s = nn.functional.adaptive_avg_pool2d(y, 1)
        y = torch.relu(y + s)
        y = s + y
        y = self.b(y + self.shift)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class MlpCat(nn.Module):
    """Rank-2 concatenation of features and a constant bias-like add."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(9, 13), nn.Linear(9, 6), nn.Linear(19, 5)
        self.register_buffer("bias2", torch.linspace(-1.0, 2.0, 19))

    def forward(self, x):
        h = torch.cat([torch.relu(self.l1(x)), torch.relu(self.l2(x))], 1)
        return self.l3(h + self.bias2)



MODELS = {"dense": (DenseLike, (1, 11, 9)), "broadcast": (BroadcastLike, (3, 9, 7)), "mlp_cat": (MlpCat, (9,))}


def quantized(name, seed=0):
    cls, shape = MODELS[name]
    return quantized_static(cls, shape, seed), shape


@pytest.fixture(scope="module", params=list(MODELS))
def compiled_model(request):
    model, shape = quantized(request.param)
    assert isinstance(model, StaticInt8Model)
    return request.param, model, shape


def test_models_cover_the_cases_and_compile(compiled_model):
    name, model, _ = compiled_model
    kinds = [type(m) for m in model.layers.values()]
    if name == "dense":
        cats = [m for m in model.layers.values() if isinstance(m, StaticCat)]
        assert len(cats) == 3 and all(m.out_scale is not None for m in cats)
        assert any(m.requantized_inputs() for m in cats), "one concatenation must requantize an input"
    elif name == "broadcast":
        adds = [m for m in model.layers.values() if isinstance(m, StaticBroadcastAdd)]
        assert len(adds) == 3 and sum(m.b_codes is not None for m in adds) == 1
    else:
        assert StaticCat in kinds and StaticBroadcastAdd in kinds
    assert compile_program(model) is not None, "the whole program should run in one call"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_program_is_bit_identical_to_node_by_node(isa, compiled_model, batch, threads):
    _, model, shape = compiled_model
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch)) * 1.5
    torch.set_num_threads(threads)
    with torch.inference_mode():
        model.run_as_program = False
        ref = model(x)
        model.run_as_program = True
        got = model(x)
    assert model._compiled, "the program ran"
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert torch.equal(got, ref)


def test_other_input_sizes_run_as_program():
    model, _ = quantized("broadcast")
    for shape in [(2, 3, 1, 1), (1, 3, 17, 4)]:
        x = torch.randn(*shape)
        model.run_as_program = False
        ref = model(x)
        model.run_as_program = True
        assert torch.equal(model(x), ref)


def test_saved_and_loaded_model_runs_as_program(tmp_path):
    for name in ("dense", "broadcast"):
        model, shape = quantized(name)
        assert_loads_as_program(model, torch.randn(3, *shape), tmp_path / f"{name}.static.safetensors")


QUANT = _node(0, -1, -1, 0, (4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))


def _pool(src, out):
    return _node(4, src, -1, out, (0,) * 13 + (1, 0))


def _cat_arrays(slots, scales=None, zps=None):
    return (np.array(slots, np.int32), np.array(scales or [1.0] * len(slots), np.float32),
            np.array(zps or [0] * len(slots), np.int32))


def test_a_hand_built_cat_and_broadcast_add_compute_what_they_say():
    cat = _node(5, 0, -1, 1, (0, 2) + (0,) * 13, arrays=_cat_arrays([0, 0], [1.0, 0.5], [0, 3]))
    prog = _C.static_program([QUANT, cat, _pool(1, 2)])
    x = np.arange(-4, 4, dtype=np.float32).reshape(2, 4, 1, 1)
    out = _C.static_program_run(prog, x)
    # the second copy: ((q - 3) * 0.5) * 1, rounded half to even
    second = np.clip(np.round((x.reshape(2, 4) - 3) * 0.5), -127, 127)
    assert np.array_equal(out.reshape(2, 8), np.concatenate([x.reshape(2, 4), second], 1))
    const = np.array([1, -2, 3, 4], np.int8)
    add = _node(6, 0, -1, 1, (0, 4, 1, 1) + (0,) * 11, arrays=(const,))
    out = _C.static_program_run(_C.static_program([QUANT, add, _pool(1, 2)]), np.ones((1, 4, 2, 3), np.float32))
    assert np.array_equal(out.reshape(4), 1.0 + const)


def test_hostile_cat_and_broadcast_nodes_are_refused():
    def build(*nodes):
        return _C.static_program([QUANT, *nodes])

    ok = _node(5, 0, -1, 1, (0, 2) + (0,) * 13, arrays=_cat_arrays([0, 0]))
    assert build(ok, _pool(1, 2))
    with pytest.raises(ValueError, match="value written"):
        build(_node(5, 0, -1, 1, (0, 2) + (0,) * 13, arrays=_cat_arrays([0, 7])), _pool(1, 2))
    with pytest.raises(ValueError, match="value written"):
        build(_node(5, 0, -1, 1, (0, 2) + (0,) * 13, arrays=_cat_arrays([0, 1])), _pool(1, 2))  # reads itself
    with pytest.raises(ValueError, match="first input slot"):
        build(_node(5, 0, -1, 2, (0, 2) + (0,) * 13, arrays=_cat_arrays([1, 0])), _pool(2, 3))
    with pytest.raises(ValueError, match="scale"):
        build(_node(5, 0, -1, 1, (0, 2) + (0,) * 13, arrays=_cat_arrays([0, 0], [1.0, math.nan])), _pool(1, 2))
    with pytest.raises(ValueError, match="zero-point"):
        build(_node(5, 0, -1, 1, (0, 2) + (0,) * 13, arrays=_cat_arrays([0, 0], None, [0, 200])), _pool(1, 2))
    with pytest.raises(ValueError, match="1..4096 inputs"):
        build(_node(5, 0, -1, 1, (0, 0) + (0,) * 13, arrays=_cat_arrays([])), _pool(1, 2))
    with pytest.raises(ValueError, match="entries"):
        build(_node(5, 0, -1, 1, (0, 3) + (0,) * 13, arrays=_cat_arrays([0, 0])), _pool(1, 2))
    with pytest.raises(TypeError):
        build(_node(5, 0, -1, 1, (0, 2) + (0,) * 13, arrays=_cat_arrays([0, 0])[:2]), _pool(1, 2))
    with pytest.raises(TypeError):
        build(_node(5, 0, -1, 1, (0, 2) + (0,) * 13, arrays=(np.zeros(2, np.int64),) + _cat_arrays([0, 0])[1:]),
              _pool(1, 2))
    with pytest.raises(ValueError, match="last"):
        build(_node(5, 0, -1, 1, (0, 2) + (0,) * 11 + (1, 0), arrays=_cat_arrays([0, 0])))
    # the slots are copied at build: editing the arrays afterwards changes nothing
    arrays = _cat_arrays([0, 0])
    prog = build(_node(5, 0, -1, 1, (0, 2) + (0,) * 13, arrays=arrays), _pool(1, 2))
    arrays[0][:] = 1000
    arrays[1][:] = math.nan
    out = _C.static_program_run(prog, np.ones((1, 4, 2, 2), np.float32))
    assert np.array_equal(out.reshape(8), np.ones(8, np.float32))
    # broadcasting adds
    const = np.ones(4, np.int8)
    assert build(_node(6, 0, -1, 1, (0, 4, 1, 1) + (0,) * 9 + (1, 0), arrays=(const,)))
    with pytest.raises(ValueError, match="constant's shape"):
        build(_node(6, 0, -1, 1, (0, 4, 0, 1) + (0,) * 9 + (1, 0), arrays=(const,)))
    with pytest.raises(ValueError, match="entries"):
        build(_node(6, 0, -1, 1, (0, 4, 2, 1) + (0,) * 9 + (1, 0), arrays=(const,)))
    with pytest.raises(TypeError, match="codes"):
        build(_node(6, 0, -1, 1, (0, 4, 1, 1) + (0,) * 9 + (1, 0)))
    with pytest.raises(ValueError, match="value slots"):
        build(_node(6, 0, 5, 1, (0,) * 13 + (1, 0)))
    with pytest.raises(ValueError, match="add scales"):
        build(_node(6, 0, 0, 1, (0,) * 13 + (1, 0), floats=(-1.0, 1.0, 1.0, 0.0, 1.0, 1.0)))
    prog = build(_node(6, 0, -1, 1, (0, 3, 1, 1) + (0,) * 9 + (1, 0), arrays=(np.ones(3, np.int8),)))
    with pytest.raises(ValueError, match="broadcast"):
        _C.static_program_run(prog, np.ones((1, 4, 2, 2), np.float32))  # 4 channels + 3
    cat_hw = build(_node(1, 0, -1, 1, (4, 16, 3, 3, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0),
                         arrays=(np.zeros(16 * 36, np.int8), np.zeros(16, np.int32), np.ones(16, np.float32), None)),
                   _node(5, 0, -1, 2, (0, 2) + (0,) * 13, arrays=_cat_arrays([0, 1])), _pool(2, 3))
    with pytest.raises(ValueError, match="pixel counts"):
        _C.static_program_run(cat_hw, np.ones((1, 4, 4, 4), np.float32))
