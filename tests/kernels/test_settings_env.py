"""MONO_QUANT_ISA read at import: any case; an unknown or unsupported value warned at the user's line."""
import os
import subprocess
import sys

import pytest


def _import_with(value: str, code: str = "import mono_quant\nfrom mono_quant import _C\nprint(_C.get_isa())\n"):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, MONO_QUANT_ISA=value))


@pytest.mark.parametrize("value", ["SCALAR", "Scalar", "scalar"])
def test_the_level_is_taken_in_any_case(value):
    out = _import_with(value)
    assert out.returncode == 0 and out.stdout.strip() == "scalar" and "Warning" not in out.stderr, out.stderr


def test_an_unknown_level_warns_at_the_import_line():
    out = _import_with("sse9", "x = 1\nimport mono_quant\n")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(lines) == 1 and lines[0].startswith("<string>:2: RuntimeWarning: MONO_QUANT_ISA=sse9 is unknown"), \
        out.stderr
    assert "one of scalar, avx2, avx512" in lines[0]
