"""Static int8 of nn.Conv1d (audio front ends, 1-D CNNs): the height-1 StaticConv2d, BatchNorm1d
folded, ReLU fused, int8 between two Conv1d; it stayed float ("no int8 kernel") while dynamic
int8 quantized it.  Bit-identical to the 2-D layer it stands for, saved and loaded bit for bit,
checked against model= at load, in the per-layer fallback too."""
import json
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrizations

import mono_quant as mq
from mono_quant.errors import CheckpointError
from mono_quant.static import StaticConv1d, StaticConv2d


class AudioNet(nn.Module):
    """Conv1d + BatchNorm1d + ReLU chains, a depthwise, a strided / dilated one, a residual add."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv1d(4, 16, 5, padding=2), nn.BatchNorm1d(16)
        self.dw = nn.Conv1d(16, 16, 3, padding=1, groups=16)
        self.c2 = nn.Conv1d(16, 24, 3, stride=2, dilation=2, padding=1)
        self.c3 = nn.Conv1d(24, 24, 1, groups=4, bias=False)
        self.fc = nn.Linear(24, 6)

    def forward(self, x):
        y = torch.relu(self.bn1(self.c1(x)))
        y = torch.relu(self.dw(y))
        y = self.c2(y)
        y = y + self.c3(y)  # (an add of Conv1d outputs: float, as no int8 add reads their codes)
        return self.fc(y.mean(-1))


def _trained_like(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _static(model, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(model, "int8", activations="static", calibration=data, **kw)


def _sqnr(ref, got):
    return float(10 * torch.log10(ref.pow(2).mean() / (got - ref).pow(2).mean()))


@pytest.fixture(scope="module")
def audio():
    model = _trained_like(AudioNet())
    torch.manual_seed(1)
    data = [torch.randn(8, 4, 37) for _ in range(4)]
    return model, data, _static(model, data)


def test_conv1d_layers_are_quantized_fused_and_chained_in_int8(audio):
    model, data, result = audio
    kinds = {r.name: (r.kind, r.fused, r.output) for r in result.report.layers}
    assert kinds["c1"] == ("conv1d", ["c1", "bn1", "relu"], "int8")  # BatchNorm1d folded, ReLU fused
    assert kinds["dw"][0] == "conv1d" and kinds["dw"][2] == "int8"   # into c2 as int8 codes
    assert kinds["c2"][2] == "float" and kinds["c3"][2] == "float"   # read by the float add
    assert not {"c1", "dw", "c2", "c3"} & {s.name for s in result.skipped}
    assert all(type(result.model.layers[n]) is StaticConv1d for n in ("c1", "dw", "c2", "c3"))
    assert "weight_dw" in result.model.layers["dw"]._buffers  # the depthwise kernel
    x = data[0]
    with torch.no_grad():
        ref, got = model(x), result.model(x)
    assert got.shape == ref.shape and _sqnr(ref, got) > 30


def test_a_model_output_of_a_conv1d_is_contiguous_and_unbatched_input_is_refused_clearly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.Conv1d(8, 5, 3, padding=1)).eval()
    result = _static(model, [torch.randn(16, 3, 20)])
    x = torch.randn(2, 3, 20)
    with torch.no_grad():
        y = result.model(x)
        assert y.shape == model(x).shape == (2, 5, 18) and y.is_contiguous()
        assert _sqnr(model(x), y) > 30
        with pytest.raises(ValueError, match=r"3-D \[batch, channels, length\] \(or \[channels, length\]\)"):
            result.model(torch.randn(2, 3, 4, 20))
        with pytest.raises(ValueError, match="in_channels=3, got 4 channels"):
            result.model(torch.randn(2, 4, 20))


@pytest.mark.parametrize("per_layer", [False, True], ids=["fx", "per-layer"])
def test_unbatched_sequences_as_nn_conv1d_takes_them(per_layer):
    """Calibrated on [channels, length] inputs: the Conv1d stayed float before; quantized, it raised
    "takes a 3-D input" inside quantize() (fx) or at the first call (per-layer)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv1d(3, 8, 3), nn.Conv1d(8, 5, 3, padding=1)

        def forward(self, x):
            y = self.c2(torch.relu(self.c1(x)))
            if per_layer and y.sum() > -1e9:  # (data-dependent: the per-layer fallback)
                y = y + 0
            return y

    torch.manual_seed(0)
    model = Net().eval()
    result = _static(model, [torch.randn(3, 20) for _ in range(8)])
    assert result.report.capture == ("hooks" if per_layer else "fx")
    assert {r.name for r in result.report.layers} >= {"c1", "c2"}
    x = torch.randn(3, 20)
    with torch.no_grad():
        y = result.model(x)
        assert y.shape == model(x).shape == (5, 18) and _sqnr(model(x), y) > 20
        batched = result.model(x.unsqueeze(0))
        assert torch.equal(batched[0], y)


@pytest.mark.parametrize("geometry", [dict(kernel_size=1), dict(kernel_size=4, stride=3, padding=2),
                                      dict(kernel_size=3, dilation=3, padding=4, groups=2),
                                      dict(kernel_size=5, groups=6, padding=2)],
                         ids=["k1", "stride", "dilation-groups", "depthwise"])
@pytest.mark.parametrize("out_scale", [None, 0.05], ids=["float-out", "int8-out"])
def test_bit_identical_to_the_height_1_static_conv2d(geometry, out_scale):
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 6, **geometry)
    with torch.no_grad():
        conv.weight[0] = 0.0  # an all-zero output channel
    twin = nn.Conv2d(6, 6, (1, conv.kernel_size[0]), (1, conv.stride[0]), (0, conv.padding[0]),
                     (1, conv.dilation[0]), conv.groups)
    with torch.no_grad():
        twin.weight.copy_(conv.weight.unsqueeze(2))
        twin.bias.copy_(conv.bias)
    one = StaticConv1d.from_float(conv, "relu", 0.03, out_scale, False)
    two = StaticConv2d.from_float(twin, "relu", 0.03, out_scale, False)
    x = torch.randn(3, 6, 29).transpose(1, 2).contiguous().transpose(1, 2) * 2  # (non-contiguous)
    with torch.no_grad():
        got, want = one(x), two(x.unsqueeze(2))
    assert torch.equal(got, want if out_scale is not None else want.squeeze(2))
    if out_scale is not None:  # int8 codes in: the height-1 NHWC image
        chained = StaticConv1d.from_float(conv, None, 0.05, None, True)
        chained_twin = StaticConv2d.from_float(twin, None, 0.05, None, True)
        with torch.no_grad():
            assert torch.equal(chained(got), chained_twin(want).squeeze(2))


def test_save_load_round_trip_and_model_checks(audio, tmp_path):
    model, data, result = audio
    path = mq.save(result, tmp_path / "a.safetensors")
    with torch.no_grad():
        for loaded in (mq.load(path), mq.load(path, model=model)):
            assert all(torch.equal(loaded(x), result.model(x)) for x in data)
    other = _trained_like(AudioNet())
    other.c2.stride = (1,)
    with pytest.raises(CheckpointError, match=r"layer 'c2': stride \(1,\) in the file, \(2,\) in the model|"
                                              r"layer 'c2': stride \(2,\) in the file, \(1,\) in the model"):
        mq.load(path, model=other)


def test_a_file_with_a_2d_geometry_for_a_conv1d_is_refused(audio, tmp_path):
    _, _, result = audio
    path = mq.save(result, tmp_path / "a.safetensors")
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    manifest = json.loads(meta["mono_quant.static"])
    manifest["layers"]["c2"]["init_kwargs"]["$dict"]["stride"] = [2, 2]
    meta["mono_quant.static"] = json.dumps(manifest)
    save_file(tensors, str(tmp_path / "edited.safetensors"), meta)
    with pytest.raises(CheckpointError, match="layer 'c2' .*StaticConv1d takes the height-1 geometry"):
        mq.load(tmp_path / "edited.safetensors")


def test_conv1d_paddings_the_kernels_dont_make_run_int8():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 4, padding="same"), nn.ReLU(),
                          nn.Conv1d(8, 8, 3, padding=1, padding_mode="reflect"), nn.Conv1d(8, 8, 1)).eval()
    result = _static(model, [torch.randn(16, 4, 12)], exclude=["3"])
    listed = {s.name: s.reason for s in result.skipped}
    assert set(listed) == {"3"} and "exclude" in listed["3"]
    x = torch.randn(2, 4, 12)
    with torch.no_grad():
        y, ref = result.model(x), model(x)
    assert float(10 * torch.log10(ref.pow(2).mean() / (y - ref).pow(2).mean())) > 25


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = parametrizations.weight_norm(nn.Conv1d(4, 8, 3, padding=1))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(self.c(x))
        if y.sum() > -1e9:  # (data-dependent: torch.fx can't trace it)
            y = y + 0
        return self.fc(y.mean(-1))


def test_per_layer_fallback_quantizes_a_parametrized_conv1d_and_saves_it(tmp_path):
    torch.manual_seed(0)
    model = Untraceable().eval()
    data = [torch.randn(16, 4, 20) for _ in range(4)]
    result = _static(model, data)
    assert result.report.capture == "hooks"
    assert {r.name: r.kind for r in result.report.layers} == {"c": "conv1d", "fc": "linear"}
    x = data[0]
    with torch.no_grad():
        y = result.model(x)
        assert _sqnr(model(x), y) > 25
    assert type(model.c).__name__ == "ParametrizedConv1d"  # (the caller's model untouched)
    path = mq.save(result, tmp_path / "p.safetensors")
    with torch.no_grad():
        assert torch.equal(mq.load(path, model=Untraceable().eval())(x), y)
    wrong = Untraceable().eval()
    wrong.c = nn.Conv1d(4, 8, 3, padding=2)
    with pytest.raises(CheckpointError, match="layer 'c': padding"):
        mq.load(path, model=wrong)
