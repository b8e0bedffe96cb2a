"""quantize() never returns silently when it did nothing useful: unmatched
include / exclude patterns, nothing to quantize, an already quantized model,
integer inputs to quantized layers, and readable signature defaults."""
import inspect
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.cli import main
from mono_quant.errors import AlreadyQuantizedError
from mono_quant.strictness import LargerModelWarning, NothingQuantizedWarning, UnmatchedPatternWarning


def _model():
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 16))  # (narrower int8 layers stay float: narrow.py)


@pytest.mark.parametrize("option", [dict(include=["encoder.*"]), dict(exclude=["lm_haed"]),
                                    dict(exclude=[nn.Conv2d])], ids=["include-glob", "exclude-glob", "type"])
def test_unmatched_pattern_raises(option):
    with pytest.raises(mq.ConfigError, match="no layer"):
        mq.quantize(_model(), **option)


def test_unmatched_pattern_in_state_dict_raises():
    with pytest.raises(mq.ConfigError, match="'head'"):
        mq.quantize(_model().state_dict(), exclude=["head"])
    assert len(mq.quantize(_model().state_dict(), exclude=["2"]).report.layers) == 1


@pytest.mark.parametrize("option", ["include", "exclude"])
def test_a_type_pattern_without_modules_says_to_pass_the_model(tmp_path, option):
    """A state_dict has names only: a type can't match there, and "check the spelling" was wrong."""
    from safetensors.torch import save_file

    sd = _model().state_dict()
    with pytest.raises(mq.ConfigError, match=f"{option}=Linear: module types need the model's modules.*pass model="
                                             f".*or use name globs") as info:
        mq.quantize(sd, **{option: [nn.Linear]})
    assert "spelling" not in str(info.value)
    save_file(sd, str(tmp_path / "m.safetensors"))
    with pytest.raises(mq.ConfigError, match=f"{option}=Linear: module types.*takes globs only"):
        mq.quantize_checkpoint(tmp_path / "m.safetensors", tmp_path / "q.safetensors", **{option: nn.Linear})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingQuantizedWarning)  # (exclude: every layer excluded)
        result = mq.quantize(sd, model=_model(), **{option: [nn.Linear]})  # with the model, types match
    assert len(result.report.layers) == (2 if option == "include" else 0)


def test_unmatched_pattern_from_config_file_warns(tmp_path, monkeypatch):
    (tmp_path / "mono_quant.toml").write_text('exclude = ["lm_head"]\n')
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UnmatchedPatternWarning, match="lm_head"):
        assert len(mq.quantize(_model()).report.layers) == 2


def test_checkpoint_and_cli_unmatched_pattern(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file(_model().state_dict(), str(tmp_path / "m.safetensors"))
    with pytest.raises(mq.ConfigError):
        mq.quantize_checkpoint(tmp_path / "m.safetensors", tmp_path / "q.safetensors", exclude=["nope.*"])
    assert main(["quantize", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "q.safetensors"),
                 "--exclude", "nope.*"]) == 1
    assert "no layer" in capsys.readouterr().err


def test_nothing_to_quantize_warns():
    with pytest.warns(NothingQuantizedWarning, match="nothing was quantized"):
        mq.quantize(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)))
    with pytest.warns(NothingQuantizedWarning, match="excluded"):
        mq.quantize(_model(), exclude=["*"])


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_requantizing_warns_and_refuses_the_state_dict(dtype):
    qmodel = mq.quantize(_model(), dtype=dtype).model
    # a model: its quantized layers are left alone (mixed precision: tests/test_mixed_precision.py)
    with pytest.warns(NothingQuantizedWarning, match="already quantized"):
        mq.quantize(qmodel, dtype="int4")
    if dtype != "fp16":  # an fp16 state_dict is a float state_dict like any other
        with pytest.raises(AlreadyQuantizedError):
            mq.quantize(qmodel.state_dict())


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
@pytest.mark.parametrize("layer", [nn.Linear(8, 4), nn.Conv2d(3, 4, 3), nn.Conv1d(3, 4, 3)],
                         ids=["linear", "conv2d", "conv1d"])
def test_integer_input_raises_as_float_layer(dtype, layer):
    shape = {nn.Linear: (2, 8), nn.Conv2d: (1, 3, 6, 6), nn.Conv1d: (1, 3, 6)}[type(layer)]
    x = torch.ones(shape, dtype=torch.int64)
    with pytest.raises(RuntimeError):
        layer(x)
    q = mq.quantize(nn.Sequential(layer), dtype=dtype).model
    with pytest.raises(RuntimeError):
        q(x)


def test_signatures_show_readable_defaults():
    for fn in (mq.quantize, mq.quantize_checkpoint):
        text = str(inspect.signature(fn))
        assert "object at 0x" not in text and "activations=DEFAULT" in text


def test_larger_quantized_model_warns():
    with pytest.warns(LargerModelWarning, match="min_weight_numel"):
        mq.quantize(nn.Sequential(nn.Linear(2, 16)))  # a 16x2 weight's scales and column sums outweigh it
    with warnings.catch_warnings():
        warnings.simplefilter("error", LargerModelWarning)
        mq.quantize(nn.Sequential(nn.Linear(64, 64)))


def test_other_formats_scales_are_not_taken_for_mono_quant():
    sd = {"fc.weight": torch.randn(16, 16), "fc.weight_scale": torch.ones(16)}  # e.g. an fp8 checkpoint's
    assert len(mq.quantize(sd).report.layers) == 1
