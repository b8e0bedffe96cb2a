"""A static int8 model's state_dict carries each layer's calibrated constants (activation
scales, zero-points, fused activation): load_state_dict into a model of the same calibration
gives the same outputs, and into one calibrated otherwise is refused before any tensor is
copied - it used to say "All keys matched" and answer with the target's own scales."""
import copy
import warnings

import pytest
import torch
from torch import nn
from safetensors.torch import load_file, save_file

import mono_quant as mq
from mono_quant.calibration import CalibrationWarning
from mono_quant.static import StaticNoGradWarning
from static_helpers import Chain

X = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(3))


def _static(model, seed):
    calib = torch.randn(32, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return mq.quantize(model.eval(), "int8", activations="static", calibration=calib).model


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    float_model = Chain()
    return _static(float_model, 1), _static(float_model, 1), _static(float_model, 2)


def test_a_state_dict_loads_into_a_model_of_the_same_calibration(models, tmp_path):
    source, same, _ = models
    assert same.load_state_dict(source.state_dict()) is not None and torch.equal(same(X), source(X))
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "sd.safetensors")
    same.load_state_dict(load_file(tmp_path / "sd.safetensors"))  # tensors only: safetensors takes it
    assert torch.equal(same(X), source(X))


def test_a_model_calibrated_otherwise_is_refused_and_left_as_it_was(models):
    source, _, other = models
    before, out = {k: v.clone() for k, v in other.state_dict().items()}, other(X)
    with pytest.raises(ValueError, match="calibrated otherwise.*in_scale|calibrated otherwise.*out_scale"):
        other.load_state_dict(source.state_dict())
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    assert torch.equal(other(X), out)
    layer = next(iter(other.layers.values()))
    with pytest.raises(ValueError, match="calibrated otherwise"):  # a layer on its own too
        layer.load_state_dict(next(iter(source.layers.values())).state_dict())


@pytest.mark.parametrize("state", [torch.zeros(3), torch.tensor([123, 34], dtype=torch.uint8),
                                   torch.frombuffer(bytearray(b"[1, 2]"), dtype=torch.uint8)])
def test_constants_that_are_not_what_state_dict_wrote_are_refused(models, state):
    source, same, _ = models
    sd = source.state_dict()
    sd[next(k for k in sd if k.endswith("_extra_state"))] = state
    with pytest.raises(ValueError, match="_extra_state|calibrated otherwise"):
        same.load_state_dict(sd)


def test_mq_save_files_hold_no_extra_state(models, tmp_path):
    source = models[0]
    path = mq.save(source, tmp_path / "s.safetensors")
    assert not any(k.endswith("_extra_state") for k in load_file(path))
    assert torch.equal(mq.load(path)(X), source(X))


@pytest.mark.parametrize("cast", [lambda m: m.half(), lambda m: m.double(), lambda m: m.bfloat16(),
                                  lambda m: m.to(torch.float16), lambda m: m.to("meta")],
                         ids=["half", "double", "bfloat16", "to_float16", "to_meta"])
def test_casts_away_from_float32_cpu_are_refused_before_any_change(models, cast):
    model = models[2]
    before = {k: (v, v.clone()) for k, v in model.state_dict(keep_vars=True).items() if "_extra_state" not in k}
    out = model(X)
    with pytest.raises(TypeError, match="static int8 model computes with int8 activations"):
        cast(model)
    with pytest.raises(TypeError, match="static int8 layer"):
        cast(next(iter(model.layers.values())))
    now = model.state_dict(keep_vars=True)
    assert all(now[k] is t and torch.equal(t, copy) for k, (t, copy) in before.items())
    assert torch.equal(model(X), out)


def test_float32_cpu_casts_pass(models):
    model = models[2]
    out = model(X)
    assert model.float() is model and model.cpu() is model and model.to(torch.float32) is model
    assert torch.equal(model(X), out)


def test_an_input_that_requires_grad_warns_that_the_output_is_detached(models):
    model = models[0]
    x = X.clone().requires_grad_()
    for run_as_program in (True, False):  # the one-C-call path and the layer-by-layer one
        model.run_as_program = run_as_program
        try:
            with pytest.warns(StaticNoGradWarning, match="inference-only"):
                y = model(x)
        finally:
            model.run_as_program = True
        assert not y.requires_grad and torch.equal(y, model(X))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            model(x)
        model(X)



class _TwoBehindAnIf(nn.Module):
    """Two Linears behind data-dependent control flow: fx can't trace it (the per-layer fallback)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 8)

    def forward(self, x):
        if x.sum() > -1e9:
            x = x + 0
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("loaded", [False, True], ids=["quantized", "mq.load"])
def test_a_per_layer_model_refuses_before_copying_any_layer(loaded, tmp_path):
    """The per-layer fallback's root is the user's class: its load used to copy the layers before the
    refused one (here layer a took the state_dict's bias, then layer b refused)."""
    torch.manual_seed(0)
    float_model = _TwoBehindAnIf()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        other = mq.quantize(float_model, "int8", activations="static", calibration=torch.randn(128, 16)).model
    source = copy.deepcopy(other)
    source.a.layer.bias.add_(1.0)  # a tensor that differs, in the layer torch loads first
    source.b.layer.in_scale *= 2  # the constant that refuses, in the layer it loads second
    if loaded:
        mq.save(other, tmp_path / "other.safetensors")
        other = mq.load(tmp_path / "other.safetensors", model=float_model)
    x = torch.randn(3, 16)
    before, out = {k: v.clone() for k, v in other.state_dict().items()}, other(x)
    with pytest.raises(ValueError, match="layer 'b.layer'.*calibrated otherwise.*in_scale"):
        other.load_state_dict(source.state_dict())
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    assert torch.equal(other(x), out)
    wrapped = nn.Sequential(nn.Identity(), other)  # inside another model: the check reads its prefix
    with pytest.raises(ValueError, match="layer 'b.layer'.*calibrated otherwise"):
        wrapped.load_state_dict(nn.Sequential(nn.Identity(), source).state_dict())
    assert torch.equal(other(x), out)


class _NormThenTwo(_TwoBehindAnIf):
    """A float LayerNorm the root casts before it reaches the static layers."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        return super().forward(self.norm(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_per_layer_model_follows_a_dtype_cast_around_its_static_layers(dtype):
    """The root is the user's class: it casts its children one by one, so the static layers' refusal
    left the float layers before them cast (the next call failed with "mixed dtype").  The float
    layers follow the cast; the static layers stay float32 and hand back the input's dtype."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        model = mq.quantize(_NormThenTwo(), "int8", activations="static", calibration=torch.randn(128, 16)).model
    x = torch.randn(5, 16)
    want = model(x)
    cast = copy.deepcopy(model).to(dtype)
    assert cast.norm.weight.dtype == dtype and cast.a.layer.bias.dtype == torch.float32
    got = cast(x.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.05)
    assert torch.equal(cast.float()(x), want)  # back to float32: the static layers never changed


def test_a_per_layer_model_refuses_another_device():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        model = mq.quantize(_TwoBehindAnIf(), "int8", activations="static", calibration=torch.randn(128, 16)).model
    with pytest.raises(TypeError, match="can't become float32 on meta"):
        model.to("meta")
