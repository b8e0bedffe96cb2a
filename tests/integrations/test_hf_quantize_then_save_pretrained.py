"""quantize() of a Hugging Face model loaded in float, then save_pretrained: the copy carries a
MonoQuantConfig listing its quantized layers, so from_pretrained rebuilds it bit for bit (without
it config.json was the float model's: from_pretrained built float layers, randomly initialized
around UNEXPECTED quantized buffers, silently).  The caller's model and config stay as they were."""
import warnings

import pytest
import torch

pytest.importorskip("transformers")
import hf_models  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant.modules.registry import QuantizedModule  # noqa: E402


def _formats(model):
    return {n: m.weight_format for n, m in model.named_modules() if isinstance(m, QuantizedModule)}


@pytest.mark.parametrize("kind, dtype", [("llama", "int8"), ("gpt2", "int4"), ("bert", "fp16")])
def test_save_pretrained_reloads_the_quantized_model(tmp_path, kind, dtype):
    model = hf_models.build(kind)
    qmodel = mq.quantize(model, dtype).model
    assert getattr(model.config, "quantization_config", None) is None  # the caller's config: untouched
    assert qmodel.config.quantization_config.dtype == dtype
    qmodel.save_pretrained(tmp_path / "q")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = hf_models.model_class(kind).from_pretrained(tmp_path / "q").eval()
    assert _formats(again) == _formats(qmodel) != {}
    with torch.no_grad():
        assert torch.equal(hf_models.forward(again, kind), hf_models.forward(qmodel, kind))


def test_nothing_quantized_adds_no_config():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the nothing-quantized warning)
        qmodel = mq.quantize(hf_models.build("llama"), "int8", min_weight_numel=10**9).model
    assert _formats(qmodel) == {} and getattr(qmodel.config, "quantization_config", None) is None
