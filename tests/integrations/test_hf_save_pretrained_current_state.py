"""save_pretrained writes the quantized layers as they are when saved: a layer set weight-only or
reduce_range after loading, or a model cast to bfloat16, was written as it had been loaded (its
config's layer list was taken once), so from_pretrained rebuilt another function silently, or
refused the folder ("bias is bfloat16 in the file, float32 in quantization_config")."""
import copy
import io
import json
import warnings

import pytest
import torch

pytest.importorskip("transformers")
import hf_models  # noqa: E402

import mono_quant as mq  # noqa: E402


def _reload(model, kind, folder):
    model.save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf_models.model_class(kind).from_pretrained(folder).eval()


def _set(model, what):
    for m in model.modules():
        if what == "weight_only" and hasattr(m, "set_activations"):
            m.set_activations(None)
        if what == "reduce_range" and hasattr(m, "set_reduce_range"):
            m.set_reduce_range(True)


@pytest.mark.parametrize("route", ["from_pretrained", "quantize"])
@pytest.mark.parametrize("change", ["weight_only", "reduce_range", "bfloat16"])
def test_a_change_after_loading_is_saved(tmp_path, route, change):
    kind = "gpt2"
    if route == "from_pretrained":
        model = hf_models.loaded_quantized(kind, tmp_path / "float", dtype="int8").eval()
    else:
        model = mq.quantize(hf_models.build(kind), "int8").model
    if change == "bfloat16":
        model = model.to(torch.bfloat16)
    else:
        _set(model, change)
    again = _reload(model, kind, tmp_path / "q")
    assert torch.equal(hf_models.forward(again, kind), hf_models.forward(model, kind))


@pytest.mark.parametrize("route", ["from_pretrained", "quantize"])
def test_a_deep_copy_describes_itself(tmp_path, route):
    kind = "gpt2"
    if route == "from_pretrained":
        model = hf_models.loaded_quantized(kind, tmp_path / "float", dtype="int8").eval()
    else:
        model = mq.quantize(hf_models.build(kind), "int8").model
    twin = copy.deepcopy(model).to(torch.bfloat16)
    assert twin.config.quantization_config is not model.config.quantization_config
    again = _reload(twin, kind, tmp_path / "q")
    assert torch.equal(hf_models.forward(again, kind), hf_models.forward(twin, kind))
    assert model.config.quantization_config.to_dict()["layers"][0]["orig_dtype"] == "float32"  # (the original's)


def test_the_model_pickles_and_the_config_stays_plain_data(tmp_path):
    model = hf_models.loaded_quantized("gpt2", tmp_path / "float", dtype="int8").eval()
    buffer = io.BytesIO()
    torch.save(model, buffer)  # (no weak reference in it)
    json.dumps(dict(model.config.quantization_config))
    buffer.seek(0)
    unpickled = torch.load(buffer, weights_only=False).to(torch.bfloat16)  # (its quantizer links it again)
    again = _reload(unpickled, "gpt2", tmp_path / "q")
    assert torch.equal(hf_models.forward(again, "gpt2"), hf_models.forward(unpickled, "gpt2"))
