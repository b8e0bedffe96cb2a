"""docs/cli.md and docs/config.md match the parser and QuantConfig; the version agrees everywhere."""
import dataclasses
import subprocess
import sys
from importlib.metadata import version

import pytest

import mono_quant as mq
from mono_quant.cli import main
from mono_quant.config import QuantConfig
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import gen_reference_docs  # noqa: E402


@pytest.mark.parametrize("page", sorted(gen_reference_docs.PAGES))
def test_reference_page_is_current(page):
    text = gen_reference_docs.PAGES[page]()
    assert (ROOT / page).read_text(encoding="utf-8") == text, f"{page} is stale: run python tools/gen_reference_docs.py"


def test_every_config_key_is_described():
    docs = gen_reference_docs._field_docs()
    for f in dataclasses.fields(QuantConfig):
        if f.name != "source":
            assert docs.get(f.name), f"QuantConfig's docstring does not describe {f.name!r}"


def test_every_cli_flag_is_on_the_page():
    page = (ROOT / "docs/cli.md").read_text(encoding="utf-8")
    for name, sub in gen_reference_docs._subparsers(gen_reference_docs.build_parser()).items():
        assert f"## `mono-quant {name}`" in page
        for action in sub._actions:
            for flag in [] if action.dest == "help" else action.option_strings:
                assert f"`{flag}`" in page, flag


def test_version_agrees_with_the_package_metadata(capsys):
    assert mq.__version__ == version("mono-quant")
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mono-quant {mq.__version__}"


def test_python_dash_m_is_the_same_command():
    out = subprocess.run([sys.executable, "-m", "mono_quant", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"mono-quant {mq.__version__}"


def test_every_public_name_is_in_the_api_reference():
    page = (ROOT / "docs/api.md").read_text(encoding="utf-8")
    missing = [name for name in mq.__all__ if name != "__version__" and f"::: mono_quant.{name}\n" not in page]
    assert missing == [], f"add these to docs/api.md: {missing}"


def test_every_public_callable_has_a_docstring():
    undocumented = [name for name in mq.__all__ if callable(getattr(mq, name)) and not getattr(mq, name).__doc__]
    assert undocumented == []


def test_every_argument_has_help_and_an_optional_one_is_not_required():
    page = (ROOT / "docs/cli.md").read_text(encoding="utf-8")
    for name, sub in gen_reference_docs._subparsers(gen_reference_docs.build_parser()).items():
        for action in sub._actions:
            assert action.help, f"mono-quant {name} {action.metavar or action.dest}: no help text"
    rows = [line for line in page.splitlines() if line.startswith("| `FILE` |")]
    assert "| `FILE` | optional | a mono-quant .safetensors file |" in rows  # bench's (it said required)
    assert not any(line.endswith("|  |") for line in page.splitlines())  # an empty "what it does"
    assert "; may be repeated" not in "".join(line for line in page.splitlines() if "repeatable" in line)
