"""quantize_checkpoint (and `mono-quant quantize` on a file) warns when nothing was quantized,
as quantize(state_dict) of the same tensors does."""
import warnings

import pytest
import safetensors.torch
import torch

import mono_quant as mq
from mono_quant.cli import main
from mono_quant.strictness import NothingQuantizedWarning

FLOAT_ONLY = {"norm.weight": torch.ones(8), "scale": torch.zeros(3)}  # nothing mono-quant replaces


def test_checkpoint_with_nothing_to_quantize_warns(tmp_path):
    src = tmp_path / "float.safetensors"
    safetensors.torch.save_file(FLOAT_ONLY, src)
    with pytest.warns(NothingQuantizedWarning, match="nothing was quantized"):
        mq.quantize(dict(FLOAT_ONLY))
    with pytest.warns(NothingQuantizedWarning, match="nothing was quantized"):
        result = mq.quantize_checkpoint(src, tmp_path / "q.safetensors")
    assert result.report.layers == [] and torch.equal(mq.load(result.path)["norm.weight"], FLOAT_ONLY["norm.weight"])


def test_checkpoint_with_a_layer_does_not_warn(tmp_path):
    src = tmp_path / "float.safetensors"
    safetensors.torch.save_file({**FLOAT_ONLY, "fc.weight": torch.randn(64, 64)}, src)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NothingQuantizedWarning)
        result = mq.quantize_checkpoint(src, tmp_path / "q.safetensors", min_weight_numel=0)
    assert [layer.name for layer in result.report.layers] == ["fc"]


def test_cli_on_a_file_with_nothing_to_quantize_warns(tmp_path):
    src = tmp_path / "float.safetensors"
    safetensors.torch.save_file(FLOAT_ONLY, src)
    with pytest.warns(NothingQuantizedWarning):
        main(["quantize", str(src), "-o", str(tmp_path / "q.safetensors")])


def test_the_warning_made_an_error_leaves_no_output_and_names_the_callers_line(tmp_path):
    """A CI run's filterwarnings('error'): the call raises and dst never appears (it was written first)."""
    src, dst = tmp_path / "float.safetensors", tmp_path / "q.safetensors"
    safetensors.torch.save_file(FLOAT_ONLY, src)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NothingQuantizedWarning)
        with pytest.raises(NothingQuantizedWarning):
            mq.quantize_checkpoint(src, dst)
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["float.safetensors"]
    with pytest.warns(NothingQuantizedWarning) as record:
        mq.quantize_checkpoint(src, dst)
    assert record[0].filename == __file__  # this line, not the test runner's


def test_cli_under_w_error_is_one_line_and_exit_1(tmp_path):
    import subprocess
    import sys

    src, dst = tmp_path / "float.safetensors", tmp_path / "q.safetensors"
    safetensors.torch.save_file(FLOAT_ONLY, src)
    out = subprocess.run([sys.executable, "-W", "error", "-m", "mono_quant", "quantize", str(src), "-o", str(dst)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and not dst.exists(), out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mono-quant quantize: error: nothing was quantized"), out.stderr
