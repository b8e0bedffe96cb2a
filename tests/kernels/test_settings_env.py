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


def test_a_warning_from_a_compiled_forward_names_no_torch_file(tmp_path):
    """warn_at_caller runs outside dynamo (it walks frames): a compiled call that warns breaks the
    graph where it did before, with no warning of dynamo's about sys._getframe."""
    script = tmp_path / "w.py"
    script.write_text(
        "import warnings, torch, mono_quant as mq\n"
        "from torch import nn\n"
        "class Two(nn.Module):\n"
        "    def __init__(s):\n"
        "        super().__init__(); s.a = nn.Linear(16, 16); s.b = nn.Linear(16, 16)\n"
        "    def forward(s, x, y):\n"
        "        return s.a(x) + s.b(y)\n"
        "cal = [{'x': torch.randn(4, 16), 'y': torch.randn(4, 16)} for _ in range(8)]\n"
        "with torch.no_grad(), warnings.catch_warnings():\n"
        "    warnings.simplefilter('ignore')\n"
        "    q = mq.quantize(Two().eval(), 'int8', activations='static', calibration=cal).model\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    torch.compile(q, backend='eager')(torch.randn(2, 16, requires_grad=True), torch.randn(2, 16))\n"
        "for w in caught:\n"
        "    print(type(w.message).__name__, w.filename, str(w.message)[:60])\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(" ")[1] for line in lines if line.startswith("StaticNoGradWarning")] == [str(script)], out.stdout
    assert not any("_getframe" in line for line in lines), out.stdout
