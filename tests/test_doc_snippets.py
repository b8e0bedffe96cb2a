"""Every Python block of README.md and docs/*.md runs as written.

A block runs alone, in a fresh namespace, in a temporary working directory.  A block that
uses names the page defines elsewhere or leaves to the reader (``model``, ``MyModel``,
``calibration_set``, a checkpoint folder) gets a small stand-in first, written below next to
the block's first line, so the block's own text is what runs.  A block that needs a model
from the network or a package the test set-up lacks is skipped with the reason.  A new
block runs with no stand-in: if it needs one, this test says so.
"""
import importlib.util
import re

import pytest

from conftest import ROOT

# The stand-ins, by the first line (code, without its comment) of the block they precede.
_MLP = ("import torch, mono_quant as mq\n"
        "model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)).eval()\n")
_CNN = ("import torch, mono_quant as mq\n"
        "model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),\n"
        "    torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),\n"
        "    torch.nn.Linear(8, 10)).eval()\n"
        "calibration_set = torch.utils.data.TensorDataset(torch.randn(128, 3, 12, 12), torch.randint(0, 10, (128,)))\n"
        "loader = torch.utils.data.DataLoader(calibration_set, batch_size=64)\n")
STAND_INS = {
    'qmodel, _ = mq.quantize(model, "int8", reduce_range=True)': _MLP,
    'result = mq.quantize(model, dtype="int8")': _MLP,
    'mq.quantize(model, include=["encoder.*"], exclude=["encoder.layer.11.*"])': (
        "import torch, mono_quant as mq\n"
        "layer = lambda: torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))\n"
        "model = torch.nn.Module()\n"
        "model.encoder = torch.nn.Module()\n"
        "model.encoder.layer = torch.nn.ModuleList([layer() for _ in range(12)])\n"
        "model.lm_head = torch.nn.Linear(64, 100)\n"
        "cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(10))\n"),
    'path = mq.save(qmodel, "model.mq.safetensors")': (
        _MLP + "qmodel, _ = mq.quantize(model, dtype='int8')\n"
               "def MyModel():\n"
               "    return torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))\n"),
    'result = mq.quantize_checkpoint("llama-folder/", "llama-int4.safetensors", "int4", group_size=128)': (
        "import json, os, torch, mono_quant as mq\n"
        "from safetensors.torch import save_file\n"
        "os.mkdir('llama-folder')\n"
        "shards = {'model-00001-of-00002.safetensors': {'layers.0.weight': torch.randn(64, 256)},\n"
        "          'model-00002-of-00002.safetensors': {'layers.1.weight': torch.randn(32, 256),\n"
        "                                               'norm.weight': torch.ones(256)}}\n"
        "for shard, tensors in shards.items():\n"
        "    save_file(tensors, os.path.join('llama-folder', shard))\n"
        "index = {'weight_map': {k: shard for shard, tensors in shards.items() for k in tensors}}\n"
        "with open(os.path.join('llama-folder', 'model.safetensors.index.json'), 'w') as f:\n"
        "    json.dump(index, f)\n"),
    'loader = torch.utils.data.DataLoader(calibration_set, batch_size=64)': _CNN,
    'result = mq.quantize(model, "int8", activations="static", calibration=loader,': _CNN,
    'compiled = torch.compile(qmodel, fullgraph=True)': (
        _MLP + "qmodel, _ = mq.quantize(model, dtype='int8')\n"
               "x = torch.randn(4, 512)\n"),
}
# Blocks that can't run here, by their first line (as above), with why.
SKIPS = {
    "from transformers import AutoModelForCausalLM": "loads a Hugging Face model from a path the reader supplies "
                                                     "(tests/integrations/test_hf_quantizer.py runs this path)",
    "import mono_quant":
        "reloads the folder of the block before it (tests/integrations/test_hf_autoregister.py)",
    "with torch.device(\"meta\"):": "needs a LlamaForCausalLM config and its saved file "
                                    "(tests/integrations/test_hf_skeleton.py)",
    "from mono_quant.integrations.peft import get_peft_model, lora_config, from_pretrained":
        "needs a transformer with q_proj / v_proj and a second quantized base (tests/integrations/test_peft.py)",
}
# Packages a block needs beyond the test set-up's, by a string in it.
NEEDS = {"mq.export_onnx(": "onnx"}


def _first_line(code):
    return code.splitlines()[0].split("#")[0].strip()


def _blocks():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            line = text.count("\n", 0, match.start()) + 2
            yield pytest.param(match.group(1), id=f"{page.name}:{line}")


BLOCKS = list(_blocks())


def test_the_pages_have_python_blocks():
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize("code", BLOCKS)
def test_block_runs_as_written(code, tmp_path, monkeypatch, capsys):
    first = _first_line(code)
    if first in SKIPS:
        pytest.skip(SKIPS[first])
    for needle, package in NEEDS.items():
        if needle in code and importlib.util.find_spec(package) is None:
            pytest.skip(f"needs {package}")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__doc_snippet__"}
    exec(compile(STAND_INS.get(first, ""), "<stand-in>", "exec"), namespace)
    exec(compile(code, "<doc block>", "exec"), namespace)
    if "print(" in code:
        assert capsys.readouterr().out.strip(), "a block that prints shows something"


def test_every_stand_in_and_skip_names_a_block():
    firsts = {_first_line(p.values[0]) for p in BLOCKS}
    assert set(STAND_INS) - firsts == set(), "a stand-in for a block that is gone: drop it"
    assert set(SKIPS) - firsts == set(), "a skip for a block that is gone: drop it"


def test_readme_block_prints_the_report(tmp_path, monkeypatch, capsys):
    readme = next(p.values[0] for p in BLOCKS if p.id.startswith("README.md"))
    monkeypatch.chdir(tmp_path)
    exec(compile(readme, "<README>", "exec"), {"__name__": "__doc_snippet__"})
    out = capsys.readouterr().out
    assert "2 layers quantized, 0 skipped" in out and "SQNR" in out
