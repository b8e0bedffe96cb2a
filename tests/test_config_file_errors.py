"""A config= that is not a usable TOML file says what it got and what to give."""
import pytest
from torch import nn

import mono_quant as mq
from mono_quant.cli import main


def test_a_folder_names_the_file_to_give(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder: give the TOML file itself"):
        mq.quantize(nn.Linear(4, 4), config=tmp_path)


def test_binary_garbage_is_a_config_error(tmp_path):
    path = tmp_path / "mono_quant.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(mq.ConfigError, match="not valid TOML: not UTF-8 text"):
        mq.quantize(nn.Linear(4, 4), config=path)


@pytest.mark.parametrize("config", [123, ["a.toml"]])
def test_a_wrong_type_names_what_config_takes(config):
    with pytest.raises(TypeError, match="config= takes a QuantConfig or the path of a TOML file"):
        mq.quantize(nn.Linear(4, 4), config=config)


def test_cli_config_folder_is_one_line(tmp_path, capsys):
    src = tmp_path / "missing.safetensors"
    assert main(["quantize", str(src), "-o", str(tmp_path / "q.safetensors"), "--config", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "is a folder: give the TOML file itself" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("key", ["include", "exclude"])
def test_an_include_entry_of_the_wrong_type_is_a_config_error_naming_the_file(tmp_path, key):
    """(it was a TypeError from the layer selection, without the file)"""
    path = tmp_path / "mono_quant.toml"
    path.write_text(f"{key} = [3]\n")
    with pytest.raises(mq.ConfigError, match=f"config file .*mono_quant.toml: {key} entries must be module-name "
                                             f"globs \\(str\\) or module types, got 3"):
        mq.quantize(nn.Linear(4, 4), config=path)
    with pytest.raises(mq.ConfigError, match=f"quantize\\(\\): {key} entries must be"):
        mq.quantize(nn.Linear(4, 4), **{key: ["a", None]})


@pytest.mark.parametrize("size", [2 ** 31, 2 ** 32, 2 ** 30 + 32])
def test_an_int4_group_past_the_kernels_limit_is_a_config_error_saying_it(tmp_path, size):
    """(2^31 and up raised the C layer's ValueError "a positive multiple of 32", which it is)"""
    with pytest.raises(mq.ConfigError, match="up to 1073741824"):
        mq.quantize(nn.Linear(64, 4), dtype="int4", group_size=size)
    path = tmp_path / "mono_quant.toml"
    path.write_text(f'dtype = "int4"\ngroup_size = {size}\n')
    with pytest.raises(mq.ConfigError, match="config file .*up to 1073741824"):
        mq.quantize(nn.Linear(64, 4), config=path)
    assert mq.quantize(nn.Linear(64, 4), dtype="int4", group_size=2 ** 30).model is not None
