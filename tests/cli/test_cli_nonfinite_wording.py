"""A checkpoint with NaN/Inf weights: the command's error says what to type on the command line."""
import os

import torch
from safetensors.torch import save_file

from mono_quant.cli import main


def test_nonfinite_error_names_command_line_remedies(tmp_path, capsys):
    weight = torch.randn(16, 32)
    weight[2, 3] = float("nan")
    src = tmp_path / "model.safetensors"
    save_file({"blocks.0.fc.weight": weight, "blocks.0.fc.bias": torch.zeros(16)}, os.fspath(src))
    assert main(["quantize", str(src), "-o", str(tmp_path / "q.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "--exclude 'blocks.0.fc'" in err, err  # what to type, not a Python list
    assert "[" not in err and "nonfinite='skip'" not in err, err  # no flag takes that: the config key does
    assert 'nonfinite = "skip"' in err and "--config" in err, err


def test_the_remedy_works(tmp_path, capsys):
    weight = torch.randn(16, 32)
    weight[2, 3] = float("inf")
    src = tmp_path / "model.safetensors"
    save_file({"blocks.0.fc.weight": weight, "head.weight": torch.randn(8, 16)}, os.fspath(src))
    config = tmp_path / "mq.toml"
    config.write_text('nonfinite = "skip"\n')
    assert main(["quantize", str(src), "-o", str(tmp_path / "a.safetensors"), "--config", str(config), "--quiet"]) == 0
    assert main(["quantize", str(src), "-o", str(tmp_path / "b.safetensors"), "--exclude", "blocks.0.fc",
                 "--quiet"]) == 0
