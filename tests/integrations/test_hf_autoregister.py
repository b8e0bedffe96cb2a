"""``import mono_quant``, before or after transformers, is all a save_pretrained folder of a quantized
model needs to load quantized: without the integration's import, transformers skipped the "Unknown
quantization type" and built randomly initialized float layers (the guide said it was enough)."""
import subprocess
import sys
import warnings

import pytest
import torch

pytest.importorskip("transformers")
import hf_models  # noqa: E402

import mono_quant as mq  # noqa: E402

_LOAD = """
import sys
{imports}
import torch
cls = transformers.GPT2LMHeadModel
model = cls.from_pretrained(sys.argv[1])
print(type(model.transformer.h[0].attn.c_attn).__name__)
torch.save(model(torch.arange(7).unsqueeze(0)).logits, sys.argv[2])
"""


@pytest.mark.parametrize("imports", ["import mono_quant\nimport transformers", "import transformers\nimport mono_quant"],
                         ids=["mono_quant-first", "transformers-first"])
def test_import_mono_quant_is_enough_to_load_a_quantized_folder(imports, tmp_path):
    qmodel, _ = mq.quantize(hf_models.build("gpt2"), "int8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel.save_pretrained(tmp_path / "folder")
        with torch.no_grad():
            expected = qmodel(torch.arange(7).unsqueeze(0)).logits
    out = subprocess.run([sys.executable, "-c", _LOAD.format(imports=imports), str(tmp_path / "folder"),
                          str(tmp_path / "logits.pt")], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["QuantizedGPT2Conv1D"]
    # (allclose: the float head runs torch's matmul, whose bits follow the thread count, which differs there)
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), expected, rtol=1e-4, atol=1e-5)


def test_import_mono_quant_does_not_import_transformers():
    code = "import sys, mono_quant; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["False"], out.stderr


def test_importing_transformers_after_mono_quant_loads_no_quantizer_code():
    """The hook waits for transformers' quantizer table (from_pretrained imports it): hooking the
    top-level import made every `import transformers` load it (and its modelling code), a second more."""
    code = "import sys, mono_quant, transformers; print('transformers.quantizers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["False"], out.stderr
