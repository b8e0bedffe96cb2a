"""A Hugging Face model loaded with MonoQuantConfig (int4 MLPs), then quantize() of the
rest (int8): save_pretrained lists every quantized layer, so from_pretrained rebuilds the
mixed model bit for bit; the loaded model's own list is untouched (tiny config-built models)."""
import warnings

import pytest
import torch

pytest.importorskip("transformers")
import hf_models  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant.modules.registry import QuantizedModule  # noqa: E402

MLP = {"llama": "*.mlp.*", "gpt2": "*.mlp.*"}


def _formats(model):
    return {n: m.weight_format for n, m in model.named_modules() if isinstance(m, QuantizedModule)}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_mixed_model_through_save_pretrained(tmp_path, kind):
    hf_models.build(kind).save_pretrained(tmp_path / "float")
    cls = hf_models.model_class(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = cls.from_pretrained(tmp_path / "float",
                                     quantization_config=mq.MonoQuantConfig(dtype="int4", include=[MLP[kind]]))
        listed = [entry["name"] for entry in loaded.config.quantization_config.layers]
        result = mq.quantize(loaded, "int8")
    formats = _formats(result.model)
    assert {f for n, f in formats.items() if ".mlp." in n} == {"int4"}
    assert {f for n, f in formats.items() if ".mlp." not in n} == {"int8"}
    assert all(s.reason.startswith("already quantized as int4") for s in result.skipped if ".mlp." in s.name)
    # the caller's model and its layer list are as they were
    assert [entry["name"] for entry in loaded.config.quantization_config.layers] == listed
    assert set(listed) == {n for n, f in _formats(loaded).items()}
    saved = result.model.config.quantization_config.layers
    assert {entry["name"]: entry["dtype"] for entry in saved} == {
        n: f for n, f in formats.items() if n not in {a for e in saved for a in e["aliases"]}}

    result.model.save_pretrained(tmp_path / "mixed")
    again = cls.from_pretrained(tmp_path / "mixed")
    assert _formats(again) == formats
    assert torch.equal(hf_models.forward(again, kind), hf_models.forward(result.model, kind))
