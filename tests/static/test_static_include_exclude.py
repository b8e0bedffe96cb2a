"""Static int8 honours include / exclude / min_weight_numel as dynamic int8 does: a layer not
selected stays float (exactly its float outputs, nothing fused into it) and is in ``skipped``
with the reason; a pattern that matches no layer is a ConfigError. Both captures: the fx graph
and the per-layer fallback for models fx can't trace."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.errors import ConfigError
from mono_quant.static import StaticConv2d, StaticLinear
from mono_quant.static.fallback import PerLayerStatic
from static_helpers import Branchy, trained_like

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.out(torch.relu(self.head(x)))


def _static(model, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(model, "int8", activations="static", calibration=data, **kw)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return trained_like(Net()), torch.randn(64, 3, 8, 8)


def _reasons(result):
    return {s.name: s.reason for s in result.skipped if s.type != "op"}


def test_exclude_keeps_the_layer_float_and_lists_it(net):
    model, data = net
    result = _static(model, data, exclude=["head"])
    layers = result.model.layers
    assert type(layers["head"]) is nn.Linear and torch.equal(layers["head"].weight, model.head.weight)
    assert isinstance(layers["conv"], StaticConv2d) and isinstance(layers["out"], StaticLinear)
    assert _reasons(result) == {"head": "excluded by exclude='head'"}
    assert [(s.type, s.reason) for s in result.skipped if s.name == "head"] == [("Linear", "excluded by exclude='head'")]
    # the excluded layer runs in float: the output stays close to the float model's
    x = data[:4]
    assert torch.allclose(result.model(x), model(x), atol=0.05)


def test_exclude_by_type_and_bn_stays_with_its_float_conv(net):
    model, data = net
    result = _static(model, data, exclude=[nn.Conv2d])
    layers = result.model.layers
    assert type(layers["conv"]) is nn.Conv2d and torch.equal(layers["conv"].weight, model.conv.weight)
    assert type(layers["bn"]) is nn.BatchNorm2d  # not folded into a layer left float
    assert _reasons(result) == {"conv": "excluded by exclude=Conv2d"}
    assert isinstance(layers["head"], StaticLinear)


def test_include_selects_only_its_layers(net):
    model, data = net
    result = _static(model, data, include=["out"])
    layers = result.model.layers
    assert isinstance(layers["out"], StaticLinear)
    assert type(layers["conv"]) is nn.Conv2d and type(layers["head"]) is nn.Linear
    assert _reasons(result) == {"conv": "not matched by include", "head": "not matched by include"}


def test_min_weight_numel(net):
    model, data = net
    result = _static(model, data, min_weight_numel=100)
    assert _reasons(result) == {"out": "too small: 64 weights < min_weight_numel=100"}
    assert type(result.model.layers["out"]) is nn.Linear


def test_unmatched_pattern_is_a_config_error(net):
    model, data = net
    with pytest.raises(ConfigError, match="exclude='haed' matches no layer"):
        _static(model, data, exclude=["haed"])
    with pytest.raises(ConfigError, match="include='nope' matches no layer"):
        _static(model, data, include=["nope"])
    # a BatchNorm neither is nor holds a layer (it was said to hold layers, selected by 'bn.*')
    with pytest.raises(ConfigError, match=r"exclude='bn' \(it names 'bn', a BatchNorm2d, which has no weight matrix"):
        _static(model, data, exclude=["bn"])


def test_per_layer_fallback_honours_exclude():
    torch.manual_seed(0)
    model = Branchy().eval()
    data = torch.randn(32, 3, 8, 8)
    result = _static(model, data, exclude=["fc"])
    assert result.report.capture == "hooks"
    assert isinstance(result.model.conv, PerLayerStatic)
    assert type(result.model.fc) is nn.Linear and torch.equal(result.model.fc.weight, model.fc.weight)
    assert _reasons(result) == {"fc": "excluded by exclude='fc'"}
    result = _static(model, data, include=["fc"])
    assert type(result.model.conv) is nn.Conv2d and isinstance(result.model.fc, PerLayerStatic)
    assert _reasons(result) == {"conv": "not matched by include"}


def test_per_layer_fallback_lists_layers_it_never_replaces():
    class WithEmbedding(Branchy):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(4, 2)

        def forward(self, x):
            return super().forward(x) + self.emb.weight[0]

    torch.manual_seed(0)
    result = _static(WithEmbedding().eval(), torch.randn(32, 3, 8, 8))
    assert "Conv2d, Conv1d and Linear layers only" in _reasons(result)["emb"]


def test_a_model_with_an_excluded_layer_saves_and_loads(net, tmp_path):
    # (save refused it: "'head' is a Linear, a float module with parameters")
    model, data = net
    result = _static(model, data, exclude=["head"])
    loaded = mq.load(mq.save(result, tmp_path / "m.mq"))
    assert type(loaded.layers["head"]) is torch.nn.Linear
    with torch.no_grad():
        assert torch.equal(loaded(data[:4]), result.model(data[:4]))


def test_nonfinite_weights_error_names_the_layer_or_skip_it(net):
    model, data = net
    with torch.no_grad():
        model.head.weight[3, 0] = float("nan")
    with pytest.raises(mq.NonFiniteWeightError, match=r"'head' \(Linear\).*channel 3") as info:
        _static(model, data)
    assert info.value.layer == "head" and info.value.row == 3
    result = _static(model, data, nonfinite="skip")
    assert type(result.model.layers["head"]) is nn.Linear
    assert _reasons(result) == {"head": "non-finite weights (NaN/Inf in channel 3)"}
    assert torch.isnan(model.head.weight[3, 0])  # the caller's model untouched


@pytest.mark.parametrize("option,match", [({"symmetric": False}, "symmetric=False"),
                                          ({"granularity": "per_tensor"}, "granularity='per_tensor'"),
                                          ({"embeddings": True}, "embeddings=True")])
def test_options_static_cannot_honour_are_refused(net, option, match):
    model, data = net
    with pytest.raises(ConfigError, match=f"cannot honour {match}"):
        _static(model, data, **option)
    _static(model, data, symmetric=True, granularity="per_channel", embeddings=False)  # what it does anyway


@pytest.mark.parametrize("line,match,override", [
    ("symmetric = false", "symmetric=False", {"symmetric": True}),
    ('granularity = "per_tensor"', "granularity='per_tensor'", {"granularity": "per_channel"}),
    ("embeddings = true", "embeddings=True", {"embeddings": False})])
def test_config_file_values_static_cannot_honour_are_refused_as_arguments_are(net, tmp_path, monkeypatch, line, match,
                                                                                override):
    """A config file's value is refused as the same argument is, naming the file (it was ignored)."""
    model, data = net
    (tmp_path / "mono_quant.toml").write_text(line + "\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"cannot honour {match} from config file .*mono_quant\.toml .*"
                                          rf"remove it there or pass {next(iter(override))}="):
        _static(model, data)
    _static(model, data, **override)  # the argument wins over the file, as everywhere
    config = tmp_path / "other.toml"
    config.write_text('activations = "static"\n' + line + "\n")  # a file asking for static int8 itself
    with pytest.raises(ConfigError, match=rf"cannot honour {match} from config file .*other\.toml"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mq.quantize(model, calibration=data, config=config)
    cfg = mq.QuantConfig(activations="static", **{"symmetric": False, "granularity": "per_tensor",
                                                   "embeddings": True})
    with pytest.raises(ConfigError, match="symmetric=False from the QuantConfig.*granularity='per_tensor' from the "
                                          "QuantConfig.*embeddings=True from the QuantConfig"):
        mq.quantize(model, calibration=data, config=cfg)


def test_a_layer_static_int8_does_not_replace_is_listed_by_its_path_and_type():
    class WithTransposed(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.ConvTranspose1d(4, 8, 3)])
            self.fc = nn.Linear(8, 16)

        def forward(self, x):
            return self.fc(self.blocks[0](x).mean(2))

    torch.manual_seed(0)
    result = _static(WithTransposed().eval(), torch.randn(32, 4, 10))
    listed = {s.name: (s.type, s.reason) for s in result.skipped}
    assert listed["blocks.0"][0] == "ConvTranspose1d" and "no int8 kernel" in listed["blocks.0"][1]


@pytest.mark.filterwarnings("ignore::mono_quant.calibration.CalibrationWarning")
def test_nothing_selected_warns(net):
    from mono_quant.strictness import NothingQuantizedWarning

    model, data = net
    with pytest.warns(NothingQuantizedWarning, match="include is empty"):
        mq.quantize(model, "int8", activations="static", calibration=data, include=[])
    with pytest.warns(NothingQuantizedWarning, match="excluded"):
        mq.quantize(Branchy().eval(), "int8", activations="static", calibration=torch.randn(32, 3, 8, 8),
                    exclude=["conv", "fc"])
