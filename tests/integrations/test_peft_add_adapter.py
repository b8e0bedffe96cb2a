"""A further adapter on a PEFT model of quantized layers: ``add_adapter`` with ``"all-linear"`` reached
only the layers adapted already (PEFT's expansion skips quantized Linear layers), and an adapter on
a quantized layer not adapted yet (``add_adapter`` / ``load_adapter`` with a plain config) failed
with PEFT's "not supported".  Both go through the registration and expansion get_peft_model does."""
import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
import mono_quant as mq  # noqa: E402
from mono_quant.integrations.peft import get_peft_model, lora_config  # noqa: E402


def _quantized_mlp():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    return mq.quantize(mlp, "int8").model


def _adapted(model, adapter):
    return sorted(n for n, m in model.base_model.model.named_modules()
                  if hasattr(m, "lora_A") and adapter in m.lora_A)


def test_add_adapter_all_linear_takes_every_quantized_linear():
    model = get_peft_model(_quantized_mlp(), lora_config(target_modules=["0"], r=2))
    model.add_adapter("second", peft.LoraConfig(target_modules="all-linear", r=2))
    assert _adapted(model, "second") == ["0", "2", "4"]
    assert _adapted(model, "default") == ["0"]
    model.add_adapter("third", peft.LoraConfig(target_modules=["4"], r=2))  # a quantized layer not adapted yet
    assert _adapted(model, "third") == ["4"]


def test_load_adapter_onto_a_quantized_layer_not_adapted_yet(tmp_path):
    trained = get_peft_model(_quantized_mlp(), lora_config(target_modules=["2", "4"], r=2, init_lora_weights=False))
    trained.save_pretrained(tmp_path)
    x = torch.randn(3, 16)
    with torch.no_grad():
        expected = trained(x)
    model = get_peft_model(_quantized_mlp(), lora_config(target_modules=["0"], r=2))
    model.load_adapter(tmp_path, adapter_name="loaded")
    model.set_adapter("loaded")
    assert _adapted(model, "loaded") == ["2", "4"]
    with torch.no_grad():
        assert torch.equal(model(x), expected)
