"""quantize() and quantize_checkpoint() share options, a result type and one error hierarchy."""
import pydoc
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant import errors


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32)).eval()


def _checkpoint(tmp_path, net):
    src = tmp_path / "float.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, src)
    return src


def test_errors_share_a_base_and_stay_value_errors():
    for cls in (mq.ConfigError, mq.CheckpointError, mq.NonFiniteWeightError):
        assert issubclass(cls, mq.MonoQuantError) and issubclass(cls, ValueError)
    from mono_quant.io import CheckpointError as io_checkpoint_error
    from mono_quant.io.errors import CheckpointError as old_checkpoint_error
    from mono_quant.tensor import NonFiniteWeightError as old_nonfinite
    assert io_checkpoint_error is old_checkpoint_error is errors.CheckpointError is mq.CheckpointError
    assert old_nonfinite is errors.NonFiniteWeightError is mq.NonFiniteWeightError


@pytest.mark.parametrize("as_state_dict", [False, True])
def test_quantize_names_the_layer_with_nonfinite_weights(as_state_dict):
    net = _net()
    with torch.no_grad():
        net[2].weight[5, 1] = float("nan")
    with pytest.raises(mq.NonFiniteWeightError, match="nonfinite='skip'") as info:
        mq.quantize(net.state_dict() if as_state_dict else net)
    assert info.value.layer == "2" and info.value.row == 5


def test_quantize_checkpoint_names_the_layer_with_nonfinite_weights(tmp_path):
    net = _net()
    with torch.no_grad():
        net[0].weight[7, 3] = float("inf")
    with pytest.raises(mq.NonFiniteWeightError) as info:
        mq.quantize_checkpoint(_checkpoint(tmp_path, net), tmp_path / "q.safetensors")
    assert info.value.layer == "0" and info.value.row == 7
    assert not (tmp_path / "q.safetensors").exists()


@pytest.mark.parametrize("options", [dict(dtype="int3"), dict(granularity="per_row"), dict(group_size=128),
                                     dict(dtype="int4", group_size=0), dict(dtype="int4", group_size=48),
                                     dict(activations="static")])
def test_bad_options_raise_config_error_on_both_paths(tmp_path, options):
    with pytest.raises(mq.ConfigError):
        mq.quantize(_net(), **options)
    with pytest.raises(mq.ConfigError):
        mq.quantize_checkpoint(_checkpoint(tmp_path, _net()), tmp_path / "q.safetensors", **options)


def test_help_shows_readable_defaults():
    for function in (mq.quantize, mq.quantize_checkpoint):
        text = pydoc.render_doc(function)
        assert "object at 0x" not in text
        assert "activations=DEFAULT" in text and "group_size=DEFAULT" in text
    assert repr(mq.DEFAULT) == "DEFAULT"


def test_quantize_checkpoint_returns_a_quantization_result(tmp_path):
    net = _net()
    dst = tmp_path / "q.safetensors"
    result = mq.quantize_checkpoint(_checkpoint(tmp_path, net), dst, exclude=["2"])
    assert isinstance(result, mq.QuantizationResult)
    assert result.model is None and result.path == dst and result.config.dtype == "int8"
    assert [layer.name for layer in result.report.layers] == ["0"]
    assert [s.name for s in result.skipped] == ["2"] and result.skipped is result.report.skipped
    model, skipped = result
    assert model is None and skipped == result.skipped
    with pytest.raises(TypeError, match="mono_quant.load"):
        result.state_dict()
    with pytest.warns(DeprecationWarning, match="result.report.layers"):
        assert result.layers == result.report.layers
    with pytest.warns(DeprecationWarning):
        assert result.model_bytes_after == result.report.model_bytes_after > 0
    with pytest.raises(AttributeError):
        result.no_such_field


def test_quantize_checkpoint_activations_reach_the_loaded_model(tmp_path):
    net = _net()
    dst = tmp_path / "q.safetensors"
    mq.quantize_checkpoint(_checkpoint(tmp_path, net), dst, activations=None)
    loaded = mq.load(dst, model=_net())
    expected = mq.quantize(net, activations=None).model
    assert loaded[0].activations is None and loaded[2].activations is None
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected(x))
    mq.quantize_checkpoint(_checkpoint(tmp_path, net), dst, overwrite=True)
    assert mq.load(dst, model=_net())[0].activations == "dynamic"


def test_quantize_checkpoint_refuses_embeddings(tmp_path):
    with pytest.raises(mq.ConfigError, match="embeddings=True needs the model"):
        mq.quantize_checkpoint(_checkpoint(tmp_path, _net()), tmp_path / "q.safetensors", embeddings=True)


def test_per_channel_int4_is_spelled_none(tmp_path):
    net = _net()
    result = mq.quantize(net, dtype="int4", group_size=None, method="rtn")
    assert result.config.group_size is None
    config = tmp_path / "mono_quant.toml"
    config.write_text('dtype = "int4"\ngroup_size = 0\n')
    assert mq.quantize(net, config=config, method="rtn").config.group_size is None
    with pytest.raises(mq.ConfigError):
        mq.QuantConfig(dtype="int4", group_size=0)


def test_int8_layers_record_the_same_group_size_on_both_paths(tmp_path):
    net = _net()
    mq.save(mq.quantize(net), tmp_path / "model.safetensors")
    mq.save(mq.quantize(net.state_dict()), tmp_path / "sd.safetensors")
    mq.quantize_checkpoint(_checkpoint(tmp_path, net), tmp_path / "ckpt.safetensors")
    for name in ("model", "sd", "ckpt"):
        layers = mq.load(tmp_path / f"{name}.safetensors").layers
        assert [layer["group_size"] for layer in layers] == [None, None], name


def test_result_attribute_access_does_not_warn_for_real_fields():
    result = mq.quantize(_net())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert result.report.layers and result.skipped == [] and result.path is None


@pytest.mark.parametrize("path", ["state_dict", "checkpoint"])
def test_weights_a_state_dict_leaves_float_are_listed(tmp_path, path):
    """quantize(model) lists every layer it leaves float; a state_dict's 3-D weight (a Conv1d's) and
    integer weight were copied without a word.  A norm's 1-D weight is no layer: not listed."""
    torch.manual_seed(0)
    sd = {"a.weight": torch.randn(64, 64), "c.weight": torch.randn(64, 16, 3),
          "q.weight": torch.randint(-5, 5, (64, 64), dtype=torch.int8), "n.weight": torch.randn(64)}
    if path == "state_dict":
        result = mq.quantize(sd)
        assert torch.equal(result.state_dict()["c.weight"], sd["c.weight"])
        assert torch.equal(result.state_dict()["q.weight"], sd["q.weight"])
    else:
        save_file(sd, tmp_path / "f.safetensors")
        result = mq.quantize_checkpoint(tmp_path / "f.safetensors", tmp_path / "q.safetensors")
    assert [layer.name for layer in result.report.layers] == ["a"]
    reasons = {s.name: (s.type, s.reason) for s in result.skipped}
    assert reasons == {
        "c": ("Conv1d", "a 3-D weight: quantize the model to quantize its Conv1d layers (a state_dict alone "
                        "does not say what holds it)"),
        "q": ("Linear", "not a float weight (int8): only float weights are quantized"),
    }
