"""quantize() of a PEFT model keeps its LoRA adapters float, each skipped with the reason:
quantized, an adapter would be frozen and training would silently stop updating it (on a
float base, and on a quantized one, now that a second quantize() call quantizes the rest)."""
import pytest
import torch
from torch import nn

pytest.importorskip("peft")
import mono_quant as mq  # noqa: E402
from mono_quant.integrations.peft import get_peft_model, lora_config  # noqa: E402
from mono_quant.modules.registry import QuantizedModule  # noqa: E402


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 5)).eval()


def _adapters(model):
    return {name: m for name, m in model.named_modules() if ".lora_A." in name or ".lora_B." in name}


@pytest.mark.parametrize("base", ["float", "int8"])
def test_adapters_stay_float_and_train(base):
    model = _mlp() if base == "float" else mq.quantize(_mlp(), "int8").model
    peft_model = get_peft_model(model, lora_config(r=4, target_modules=["0", "2"]))
    result = mq.quantize(peft_model, "int4")
    adapters = _adapters(result.model)
    assert adapters and not any(isinstance(m, QuantizedModule) for m in adapters.values())
    reasons = {s.name: s.reason for s in result.skipped}
    for name in adapters:
        assert "LoRA adapter" in reasons[name] and "merge_and_unload" in reasons[name]
    # the adapters still train: a step moves them
    before = {n: p.detach().clone() for n, p in result.model.named_parameters() if "lora_" in n}
    opt = torch.optim.SGD([p for n, p in result.model.named_parameters() if "lora_" in n], lr=0.1)
    result.model.train()
    loss = result.model(torch.randn(8, 24)).pow(2).mean()
    loss.backward()
    opt.step()
    assert any(not torch.equal(before[n], p) for n, p in result.model.named_parameters() if "lora_" in n)


def test_modules_to_save_copies_stay_float_and_train():
    from peft import LoraConfig

    from mono_quant.integrations.peft import register

    peft_model = get_peft_model(_mlp(), register(LoraConfig(r=4, target_modules=["0"], modules_to_save=["4"])))
    result = mq.quantize(peft_model, "int8")
    copies = {n: m for n, m in result.model.named_modules() if ".modules_to_save." in n and isinstance(m, nn.Linear)}
    assert copies and not any(isinstance(m, QuantizedModule) for m in copies.values())
    reasons = {s.name: s.reason for s in result.skipped}
    assert all("modules_to_save" in reasons[n] for n in copies)
    trainable = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert any("modules_to_save" in n for n in trainable)


def test_a_users_own_layer_named_lora_a_is_quantized():
    class Own(nn.Module):
        def __init__(self):
            super().__init__()
            self.lora_A, self.lora_B = nn.Linear(64, 64), nn.Linear(64, 8)

        def forward(self, x):
            return self.lora_B(self.lora_A(x))

    result = mq.quantize(Own(), "int8")
    assert isinstance(result.model.lora_A, QuantizedModule) and isinstance(result.model.lora_B, QuantizedModule)
