"""Arguments of the wrong type say what was wrong: quantize_weight(symmetric="no") gave symmetric
weights ("no" is truthy); quantize_checkpoint(model, ...) failed inside os.fspath."""
import re

import numpy as np
import pytest
import torch
from torch import nn

import mono_quant as mq


@pytest.mark.parametrize("symmetric", ["no", 1, None])
def test_quantize_weight_symmetric_must_be_a_bool(symmetric):
    with pytest.raises(TypeError, match="symmetric must be True or False"):
        mq.quantize_weight(torch.randn(4, 64), "int8", symmetric=symmetric)


def test_quantize_weight_symmetric_bools_still_work():
    assert mq.quantize_weight(torch.randn(4, 64), "int8", symmetric=True).symmetric is True
    assert mq.quantize_weight(torch.randn(4, 64), "int4", symmetric=False).symmetric is False


@pytest.mark.parametrize("src", [nn.Linear(4, 4), {"w": torch.ones(2)}], ids=["module", "state_dict"])
def test_quantize_checkpoint_in_memory_points_to_quantize(src, tmp_path):
    with pytest.raises(TypeError, match="takes file paths; src is a .*use mono_quant.quantize"):
        mq.quantize_checkpoint(src, tmp_path / "q.safetensors")
    with pytest.raises(TypeError, match="takes file paths; dst is a int"):
        mq.quantize_checkpoint(tmp_path / "model.safetensors", 3)


# ---- int options: any integer type (numpy's, a 0-d integer tensor), never a bool or a float

INTEGERS = [np.int64(64), np.int32(64), np.uint16(64), torch.tensor(64)]
NOT_INTEGERS = [True, np.bool_(True), torch.tensor(True), 64.0, np.float64(64.0), "64"]


@pytest.mark.parametrize("value", INTEGERS, ids=repr)
def test_numpy_and_tensor_integers_are_integers(value):
    cfg = mq.quantize(nn.Sequential(nn.Linear(64, 8), nn.Linear(8, 8)), "int4", group_size=value,
                      min_weight_numel=value // 2).config
    assert cfg.group_size == 64 and type(cfg.group_size) is int
    assert cfg.min_weight_numel == 32 and type(cfg.min_weight_numel) is int
    assert mq.QuantConfig(calibration_samples=value).calibration_samples == 64
    assert mq.quantize_weight(torch.randn(4, 64), "int4", group_size=value // 2).group_size == 32
    assert mq.quantize_weight(torch.randn(4, 64), "int8", axis=value // 64).axis == 1


@pytest.mark.parametrize("value", NOT_INTEGERS, ids=repr)
def test_bools_and_floats_are_not_integers(value):
    with pytest.raises(mq.ConfigError, match="group_size must be a positive multiple of 32"):
        mq.quantize(nn.Linear(64, 8), "int4", group_size=value)
    with pytest.raises(mq.ConfigError, match="min_weight_numel must be a non-negative int"):
        mq.quantize(nn.Linear(64, 8), min_weight_numel=value)
    with pytest.raises(mq.ConfigError, match="calibration_samples must be a positive int"):
        mq.QuantConfig(calibration_samples=value)
    with pytest.raises(TypeError, match="axis must be an int or None"):
        mq.quantize_weight(torch.randn(4, 64), "int8", axis=value)


def test_a_config_files_bool_count_names_the_file(tmp_path):
    path = tmp_path / "q.toml"
    path.write_text("min-weight-numel = true\n")
    with pytest.raises(mq.ConfigError, match=f"config file {re.escape(str(path))}: .*min_weight_numel must "
                                             f"be a non-negative int, got True"):
        mq.quantize(nn.Linear(64, 8), config=path)


def test_a_trainers_checkpoint_dict_says_to_pass_its_state_dict():
    """quantize_checkpoint and the CLI unwrap {'state_dict': ...} files; quantize() on the loaded dict
    raised a bare "must be a torch.Tensor, got OrderedDict" (no hint)."""
    sd = torch.nn.Sequential(torch.nn.Linear(32, 32)).state_dict()
    with pytest.raises(TypeError, match=r"a training checkpoint\? Pass checkpoint\['state_dict'\]"):
        mq.quantize({"state_dict": sd, "epoch": 3}, "int8")
    with pytest.raises(TypeError, match=r"a training checkpoint\? Pass checkpoint\['state_dict'\]"):
        mq.quantize({"epoch": 3, "global_step": 10, "state_dict": sd}, "int8")  # (Lightning's order)
    with pytest.raises(TypeError, match=r"state_dict\['step'\] must be a torch.Tensor, got int: .*drop other entries"):
        mq.quantize({**sd, "step": 5}, "int8")
