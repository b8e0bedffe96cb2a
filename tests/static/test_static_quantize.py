"""quantize(..., activations="static"): capture, fusion, calibration data forms,
int8 between layers, fallback, warnings, ISA bit-identity."""
import json
import math
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant import _C
from mono_quant.calibration import CalibrationWarning
from mono_quant.errors import ConfigError
from mono_quant.static import StaticAdd, StaticConv2d, StaticGlobalAvgPool, StaticLinear, StaticReport
from mono_quant.static.quantize import _warn
from mono_quant.static.report import StaticLayerReport
from static_file_edits import StaticFileEdits
from static_helpers import Branchy, trained_like

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return nn.functional.relu(y + self.short(x))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b1 = Block(8, 8, 1)
        self.b2 = Block(8, 16, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.b2(self.b1(self.stem(x)))), 1))


class DepthwiseSeparable(nn.Module):
    """MobileNet-style: depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU6())
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        return self.head(self.pw(self.dw(self.stem(x))).mean((2, 3)))



@torch.no_grad()
def sqnr(ref, got):
    return 10 * math.log10(float((ref ** 2).sum()) / float(((ref - got) ** 2).sum()))


@pytest.fixture(scope="module")
def data():
    return torch.randn(160, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def quiet_quantize(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return mq.quantize(model, "int8", activations="static", **kw)


def test_resnet_fuses_and_stays_int8_between_layers(data):
    torch.manual_seed(0)
    model = trained_like(TinyResNet())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = quiet_quantize(model, calibration=data)
    q = result.model
    kinds = {name: type(m) for name, m in q.layers.items()}
    assert sum(k is StaticConv2d for k in kinds.values()) == 6  # stem, 2x2 block convs, one shortcut
    assert sum(k is StaticAdd for k in kinds.values()) == 2
    assert StaticGlobalAvgPool in kinds.values() and StaticLinear in kinds.values()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())       # folded
    report = result.report
    assert isinstance(report, StaticReport) and report.capture == "fx"
    by_name = {r.name: r for r in report.layers}
    assert by_name["stem_0"].act == "relu" and "stem_1" in by_name["stem_0"].fused
    # every layer but the head passes int8 on; the head's output is the model's (float)
    assert [r.output for r in report.layers].count("float") == 1 and report.layers[-1].output == "float"
    assert q.layers["b1_conv2"].int8_input and q.layers["b1_conv2"].out_scale is not None
    # ReLU outputs use all 255 codes (zero-point -127); signed ones are symmetric
    assert q.layers["b1_conv1"].out_zp == -127 and q.layers["b1_conv2"].in_zp == -127
    assert q.layers["b1_conv2"].out_zp == 0 and q.layers["add"].out_zp == -127
    x = data[:16]
    assert sqnr(model(x), q(x)) > 25
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # caller's model untouched
    assert "b1_conv1" in str(report) and "SQNR" in str(report)


@pytest.mark.parametrize("form", ["tensor", "list", "dataloader", "xy_tuples", "callable"])
def test_calibration_data_forms_give_the_same_ranges(data, form):
    model = trained_like(TinyResNet(), seed=2)
    batches = [data[i:i + 40] for i in range(0, 160, 40)]
    if form == "tensor":
        calib = data
    elif form == "list":
        calib = batches
    elif form == "dataloader":
        calib = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=40)
    elif form == "xy_tuples":
        calib = [(b, torch.zeros(len(b))) for b in batches]
    else:  # called with the model to run (the fused float graph that calibration observes)
        def calib(m):
            for b in batches:
                m(b)
    q = quiet_quantize(model, calibration=calib, observer="minmax").model
    reference = quiet_quantize(model, calibration=data, observer="minmax").model
    assert q.layers["b2_conv2"].out_scale == reference.layers["b2_conv2"].out_scale
    assert torch.equal(q(data[:4]), reference(data[:4]))


def test_dict_batches_call_the_model_with_keywords(data):
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = trained_like(TinyResNet())

        def forward(self, pixels):
            return self.net(pixels)
    model = Keyword().eval()
    q = quiet_quantize(model, calibration=[{"pixels": data[:80]}, {"pixels": data[80:]}]).model
    assert sqnr(model(data[:8]), q(pixels=data[:8])) > 25


def test_calibration_samples_limits_the_data(data):
    result = quiet_quantize(trained_like(TinyResNet()), calibration=data, calibration_samples=120)
    assert result.report.samples == 120


@pytest.mark.parametrize("observer", ["minmax", "moving_average", "histogram", "percentile", "entropy", "mse"])
def test_every_observer_runs(data, observer):
    model = trained_like(TinyResNet(), seed=3)
    result = quiet_quantize(model, calibration=data, observer=observer)
    assert result.report.observer == observer
    assert sqnr(model(data[:8]), result.model(data[:8])) > 10


def test_depthwise_separable_net_keeps_its_accuracy(data):
    model = trained_like(DepthwiseSeparable(), seed=4)
    result = quiet_quantize(model, calibration=data)
    q = result.model
    assert q.layers["dw_0"].depthwise and "weight_dw" in q.layers["dw_0"]._buffers
    assert q.layers["dw_0"].act == "relu6"
    assert sqnr(model(data[:16]), q(data[:16])) > 25


def test_untraceable_model_falls_back_per_layer(data):
    model = Branchy().eval()
    result = quiet_quantize(model, calibration=data)
    assert result.report.capture == "hooks" and "torch.fx" in result.report.fallback_reason
    assert "nothing fused" in result.report.not_fused[0][1]
    assert sqnr(model(data[:8]), result.model(data[:8])) > 25
    assert type(model.conv) is nn.Conv2d  # the caller's model is untouched


def test_warnings_for_few_samples_and_nan(data):
    model = trained_like(TinyResNet())
    with pytest.warns(CalibrationWarning, match="unreliable below 100"):
        mq.quantize(model, "int8", activations="static", calibration=data[:50])
    bad = data.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.warns(CalibrationWarning, match="NaN/Inf"):
        mq.quantize(model, "int8", activations="static", calibration=bad)


def test_clipping_and_sqnr_warnings():
    report = StaticReport(layers=[StaticLayerReport("a", "conv", ["a"], None, "int8", -1, 1, 0.01, 0.05, 30.0),
                                  StaticLayerReport("b", "conv", ["b"], None, "int8", -1, 1, 0.01, 0.0, 12.0)])
    with pytest.warns(CalibrationWarning) as record:
        _warn(report)
    messages = " ".join(str(w.message) for w in record)
    assert "a 5.00%" in messages and "b 12.0 dB" in messages


def test_clipping_is_measured_from_the_histogram(data):
    model = trained_like(TinyResNet())
    data = data.clone()
    data[:, :, 0, 0] = 40.0  # a rare outlier pixel: percentile ranges clip it
    result = quiet_quantize(model, calibration=data, observer="percentile")
    clipped = {r.name: r.clipped for r in result.report.layers}
    assert clipped["stem_0"] is not None and clipped["stem_0"] > 0
    minmax = quiet_quantize(model, calibration=data, observer="minmax")
    assert all(r.clipped is None for r in minmax.report.layers)  # min/max keeps no histogram: clips nothing


def test_bad_static_options_are_errors(data):
    model = TinyResNet().eval()
    with pytest.raises(ConfigError, match="needs calibration"):
        mq.quantize(model, "int8", activations="static")
    with pytest.raises(ConfigError, match="observer must be one of"):
        mq.quantize(model, "int8", activations="static", calibration=data, observer="kl")
    with pytest.raises(ConfigError, match="apply to activations='static' only"):
        mq.quantize(model, "int8", calibration=data)
    with pytest.raises(ConfigError, match="for dtype 'int8'"):
        mq.quantize(model, "int4", activations="static", calibration=data)
    with pytest.raises(TypeError, match="needs the model"):
        mq.quantize(model.state_dict(), "int8", activations="static", calibration=data)
    with pytest.raises(ConfigError, match="calibration_samples"):
        mq.quantize(model, "int8", activations="static", calibration=data, calibration_samples=0)


@pytest.fixture(scope="module")
def quantized_and_expected(data):
    previous = torch.get_num_threads()  # module scope: set up before the one_torch_thread fixture
    torch.set_num_threads(1)
    try:
        model = trained_like(TinyResNet(), seed=5)
        q = quiet_quantize(model, calibration=data).model
        return q, data[:6], q(data[:6])  # at the best level this CPU has
    finally:
        torch.set_num_threads(previous)


def test_outputs_are_bit_identical_across_isa_levels(isa, quantized_and_expected):
    q, x, expected = quantized_and_expected
    assert torch.equal(q(x), expected)


@pytest.mark.parametrize("net", ["resnet", "depthwise"])
def test_save_and_load_are_bit_exact(tmp_path, data, net):
    model = trained_like(TinyResNet() if net == "resnet" else DepthwiseSeparable(), seed=6)
    result = quiet_quantize(model, calibration=data)
    path = mq.save(result, tmp_path / "static.safetensors")
    loaded = mq.load(path)
    assert type(loaded) is type(result.model)
    assert list(loaded.layers) == list(result.model.layers)
    for name, m in result.model.layers.items():
        assert type(loaded.layers[name]) is type(m)
        if hasattr(m, "init_kwargs"):
            assert loaded.layers[name].init_kwargs() == m.init_kwargs()
    x = data[:5]
    assert torch.equal(loaded(x), result.model(x))


def test_damaged_static_files_are_refused(tmp_path, data):
    result = quiet_quantize(trained_like(TinyResNet()), calibration=data)
    edits = StaticFileEdits(mq.save(result.model, tmp_path / "s.safetensors"), "mono_quant.static", tmp_path)
    tensors = edits.tensors
    bad = dict(tensors)
    bad["layers.b1_conv1.weight_scale"] = bad["layers.b1_conv1.weight_scale"][:-1]
    with pytest.raises(mq.CheckpointError, match="weight_scale"):
        mq.load(edits.write("scale.safetensors", tensors=bad))
    evil = edits.manifest_copy()
    evil["program"][3] = {"name": evil["program"][3]["name"], "kind": "call", "inputs": [],
                          "call": {"how": "call_function", "target": "os.system", "args": ["true"], "kwargs": {}}}
    with pytest.raises(mq.CheckpointError, match="not allowed"):
        mq.load(edits.write("evil.safetensors", evil))
    wrong = edits.manifest_copy()
    wrong["layers"]["b1_conv1"]["init_kwargs"]["in_scale"] = -1.0
    with pytest.raises(mq.CheckpointError, match="in_scale"):
        mq.load(edits.write("scale2.safetensors", wrong))
    order = edits.manifest_copy()
    order["program"].reverse()
    with pytest.raises(mq.CheckpointError, match="before they are computed"):
        mq.load(edits.write("order.safetensors", order))
    sums = dict(tensors)  # the kernels trust the column sums: a wrong one is refused, not used
    sums["layers.b1_conv1.weight_colsum"] = sums["layers.b1_conv1.weight_colsum"] + 1
    with pytest.raises(mq.CheckpointError, match="weight_colsum does not match"):
        mq.load(edits.write("colsum.safetensors", tensors=sums))
    deep = edits.manifest_copy()
    deep["layers"]["b1_conv1"]["init_kwargs"]["deep"] = json.loads("[" * 200 + "]" * 200)
    with pytest.raises(mq.CheckpointError):
        mq.load(edits.write("deep.safetensors", deep))
