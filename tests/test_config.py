"""QuantConfig, config-file discovery and precedence (arguments > file > defaults)."""
import logging
import re

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.config import find_config_file, resolve_config


def test_defaults_without_any_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolve_config()
    assert cfg.dtype == "int8" and cfg.symmetric is None and cfg.granularity == "per_channel"
    assert cfg.symmetric_for("Linear") is True
    assert find_config_file() is None


def test_mono_quant_toml_is_found_and_arguments_win(tmp_path, monkeypatch):
    (tmp_path / "mono_quant.toml").write_text('dtype = "fp16"\nexclude = ["head.*"]\nmin-weight-numel = 10\n')
    monkeypatch.chdir(tmp_path)
    cfg = resolve_config()
    assert cfg.dtype == "fp16" and cfg.exclude == ["head.*"] and cfg.min_weight_numel == 10
    assert cfg.source["dtype"] == str(tmp_path / "mono_quant.toml")
    cfg = resolve_config(dtype="bf16")
    assert cfg.dtype == "bf16" and cfg.source["dtype"] == "argument" and cfg.exclude == ["head.*"]
    result = mq.quantize(nn.Sequential(nn.Linear(8, 8)))  # quantize() picks the file up too
    assert result.config.dtype == "fp16"


def test_pyproject_tool_table(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.mono-quant]\nsymmetric = false\n')
    monkeypatch.chdir(tmp_path)
    assert find_config_file() == tmp_path / "pyproject.toml"
    assert resolve_config().symmetric is False


def test_pyproject_without_table_is_ignored(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    monkeypatch.chdir(tmp_path)
    assert find_config_file() is None


def test_explicit_path_and_quantconfig(tmp_path):
    path = tmp_path / "q.toml"
    path.write_text('granularity = "per_tensor"\n')
    assert resolve_config(str(path)).granularity == "per_tensor"
    cfg = mq.QuantConfig(dtype="bf16")
    assert resolve_config(cfg, dtype="fp16").dtype == "fp16" and cfg.dtype == "bf16"


def test_unknown_keys_warn(tmp_path, caplog):
    path = tmp_path / "q.toml"
    path.write_text('dtype = "int8"\nfrobnicate = 3\n')
    with caplog.at_level(logging.WARNING, logger="mono_quant"):
        resolve_config(path)
    assert "frobnicate" in caplog.text


@pytest.mark.parametrize("text,match", [
    ('dtype = "int5"\n', "int5"),
    ('granularity = "row"\n', "granularity"),
    ('dtype = \n', "not valid TOML"),
])
def test_invalid_files_raise_naming_the_file(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        resolve_config(path)
    assert "bad.toml" in str(info.value)


def test_missing_explicit_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        resolve_config(tmp_path / "nope.toml")


# ---- settings of the file that the call's dtype / activations don't use (dropped), or that
# contradict the file's own dtype / activations (a ConfigError naming the file)


def _net():
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))


def test_int4_settings_of_the_file_are_dropped_for_an_int8_call(tmp_path, monkeypatch):
    (tmp_path / "mono_quant.toml").write_text('dtype = "int4"\nmethod = "hqq"\ngroup-size = 64\n')
    monkeypatch.chdir(tmp_path)
    cfg = mq.quantize(_net(), "int8").config
    assert (cfg.dtype, cfg.method, cfg.group_size) == ("int8", None, 128)
    assert "method" not in cfg.source and "group_size" not in cfg.source
    cfg = mq.quantize(_net()).config  # the file's dtype: its int4 settings apply
    assert (cfg.dtype, cfg.method, cfg.group_size) == ("int4", "hqq", 64)


def test_int4_settings_without_a_dtype_in_the_file_wait_for_an_int4_call(tmp_path):
    path = tmp_path / "q.toml"
    path.write_text('method = "hqq"\ngroup_size = 0\n')
    assert mq.quantize(_net(), config=path).config.method is None  # the default dtype, int8, has no method
    cfg = mq.quantize(_net(), "int4", config=path).config
    assert (cfg.method, cfg.group_size) == ("hqq", None)


def test_reduce_range_of_the_file_is_dropped_for_weight_only_and_other_dtypes(tmp_path):
    path = tmp_path / "q.toml"
    path.write_text("reduce-range = true\n")
    cfg = mq.quantize(_net(), activations=None, config=path).config
    assert cfg.activations is None and cfg.reduce_range is False
    assert mq.quantize(_net(), "fp16", config=path).config.reduce_range is False
    assert mq.quantize(_net(), config=path).config.reduce_range is True


def test_a_quantconfig_is_overridden_alike():
    base = mq.QuantConfig(dtype="int4", method="hqq", group_size=64)
    cfg = mq.quantize(_net(), "int8", config=base).config
    assert (cfg.dtype, cfg.method, cfg.group_size) == ("int8", None, 128)


@pytest.mark.parametrize("text, says", [
    ('dtype = "int8"\nmethod = "hqq"\n', 'method = "hqq" applies to dtype \'int4\' only, and the file sets dtype = '
                                         '"int8"'),
    ('dtype = "int8"\ngroup-size = 64\n', "group_size = 64 applies to dtype 'int4' only"),
    ('activations = "none"\nreduce-range = true\n', 'the file sets activations = "none"'),
    ('dtype = "fp16"\nsymmetric = true\n', "symmetric = true applies to the integer dtypes only"),
    ('dtype = "int4"\ngranularity = "per_tensor"\n', 'granularity = "per_tensor" applies to dtypes'),
])
def test_settings_that_contradict_the_files_own_dtype_name_the_file(tmp_path, text, says):
    path = tmp_path / "q.toml"
    path.write_text(text)
    with pytest.raises(mq.ConfigError) as info:
        mq.quantize(_net(), config=path)
    message = str(info.value)
    assert message.startswith(f"config file {path}: ") and says in message and "quantize()" not in message, message
    assert "remove one of them from the file" in message


def test_an_argument_that_does_not_fit_the_files_dtype_says_where_the_dtype_is_from(tmp_path):
    path = tmp_path / "q.toml"
    path.write_text('dtype = "int8"\n')
    for options in ({"method": "hqq"}, {"group_size": 64}):
        with pytest.raises(mq.ConfigError, match=f'applies to dtype \'int4\' only.*; dtype "int8" comes from config '
                                                 f'file {re.escape(str(path))}'):
            mq.quantize(_net(), config=path, **options)


def test_cli_options_over_a_files_int4_and_reduce_range_settings(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    from mono_quant.cli import main

    save_file(_net().state_dict(), str(tmp_path / "m.safetensors"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mono_quant.toml").write_text('dtype = "int4"\nmethod = "hqq"\n')
    assert main(["quantize", "m.safetensors", "-o", "a.safetensors", "--dtype", "int8", "--quiet"]) == 0
    assert mq.load(tmp_path / "a.safetensors")["0.weight_packed"].dtype == torch.int8
    (tmp_path / "mono_quant.toml").write_text("reduce-range = true\n")
    assert main(["quantize", "m.safetensors", "-o", "b.safetensors", "--weight-only", "--quiet"]) == 0
    layer = mq.load(tmp_path / "b.safetensors", model=_net())[0]
    assert layer.activations is None and not layer.reduce_range


def test_reduce_range_message_names_the_activations_passed():
    with pytest.raises(mq.ConfigError, match="activations 'weight_only'"):
        mq.quantize(torch.nn.Linear(64, 64), "int8", activations="weight_only", reduce_range=True)
