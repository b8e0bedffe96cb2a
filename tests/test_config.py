"""QuantConfig, config-file discovery and precedence (arguments > file > defaults)."""
import logging

import pytest
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
