"""The oldest torch mono-quant runs on is checked at import: an older torch gets an ImportError
that names both versions and what to do, not an AttributeError in a first call; torch
functions newer than that floor are looked up with a fallback."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mono_quant
from mono_quant.torch_features import MIN_TORCH, check_torch_version, is_exporting, torch_release


@pytest.mark.parametrize("version,release", [("2.13.0+cpu", (2, 13)), ("2.4.0", (2, 4)), ("2.6.0a0+git1234", (2, 6)),
                                             ("10.0", (10, 0)), ("nightly", (0, 0))])
def test_torch_release_reads_major_and_minor(version, release):
    assert torch_release(version) == release


@pytest.mark.parametrize("version", ["2.3.1", "2.1.0+cu121", "1.13.1", "nightly"])
def test_an_older_torch_is_refused_with_what_to_do(version):
    with pytest.raises(ImportError, match=rf"mono-quant needs torch >= 2\.4; this environment has torch "
                                          rf"{re.escape(version)}\. Upgrade torch"):
        check_torch_version(version)


@pytest.mark.parametrize("version", ["2.4.0", "2.9.1", "2.13.0+cpu", "3.0.0"])
def test_the_floor_and_newer_pass(version):
    check_torch_version(version)


def test_the_running_torch_is_supported():
    assert torch_release(torch.__version__) >= MIN_TORCH


def test_the_package_metadata_states_the_same_floor():
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.exists():  # (the wheel test runs outside the source tree)
        pytest.skip("no pyproject.toml beside the tests")
    need = ".".join(map(str, MIN_TORCH))
    assert f'"torch>={need}"' in pyproject.read_text()


def test_import_refuses_an_older_torch_before_anything_else():
    # a fresh interpreter whose torch claims an older release: the import stops at the check
    code = ("import torch; torch.__version__ = '2.3.1'\n"
            "try:\n    import mono_quant\nexcept ImportError as exc:\n    print('refused:', exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: mono-quant needs torch >= 2.4; this environment has torch 2.3.1" in out.stdout


def test_is_exporting_is_false_in_eager_code():
    assert is_exporting() is False
    assert mono_quant.__name__ == "mono_quant"
