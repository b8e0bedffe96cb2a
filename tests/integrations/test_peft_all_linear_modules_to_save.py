"""get_peft_model on a quantized model: target_modules="all-linear" takes the quantized Linear
layers too (PEFT's expansion took nn.Linear only: the quantized layers got no adapter, silently,
or PEFT found no target), and modules_to_save naming a quantized layer is refused (its full copy
held codes that never trained, and the adapter file held them, silently)."""
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
import hf_models  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant.integrations.peft import get_peft_model, lora_config  # noqa: E402

PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _adapted(peft_model):
    return {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters() if ".lora_A" in n}


@pytest.mark.parametrize("exclude", [None, ["*.o_proj"]])
def test_all_linear_adapts_quantized_layers(exclude):
    float_targets = _adapted(get_peft_model(hf_models.build("llama"), lora_config(r=4, target_modules="all-linear")))
    qmodel = mq.quantize(hf_models.build("llama"), "int8", exclude=exclude).model
    peft_model = get_peft_model(qmodel, lora_config(r=4, target_modules="all-linear"))
    assert _adapted(peft_model) == float_targets == PROJECTIONS  # (not the output layer, as PEFT)
    with torch.no_grad():  # a fresh adapter: the quantized model's outputs
        assert torch.equal(hf_models.forward(peft_model, "llama"), hf_models.forward(qmodel, "llama"))


def test_modules_to_save_on_a_quantized_layer_is_refused():
    qmodel = mq.quantize(hf_models.build("llama"), "int8").model
    with pytest.raises(ValueError, match=r"'lm_head' is quantized .*exclude=\['lm_head'\]"):
        get_peft_model(qmodel, lora_config(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    kept_float = mq.quantize(hf_models.build("llama"), "int8", exclude=["lm_head"]).model
    peft_model = get_peft_model(kept_float, lora_config(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    assert any("modules_to_save" in n and p.requires_grad for n, p in peft_model.named_parameters())


@pytest.mark.parametrize("head", ["masked_lm", "seq_cls"])
def test_all_linear_leaves_a_nested_or_classifier_head_as_peft_does(head):
    # BertForMaskedLM's head is cls.predictions.decoder: "decoder" stood for it as a name end, so it took
    # an adapter where PEFT gives none; a sequence classifier's head likewise (task_type SEQ_CLS)
    import transformers

    def adapted(peft_model):
        return {n.split(".lora_A")[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}

    config = hf_models.config_of("bert")
    config.tie_word_embeddings = False
    cls = transformers.BertForMaskedLM if head == "masked_lm" else transformers.BertForSequenceClassification
    extra = {} if head == "masked_lm" else {"task_type": "SEQ_CLS"}
    torch.manual_seed(0)
    float_targets = adapted(get_peft_model(cls(config).eval(), lora_config(r=4, target_modules="all-linear", **extra)))
    torch.manual_seed(0)
    qmodel = mq.quantize(cls(config).eval(), "int8").model
    targets = adapted(get_peft_model(qmodel, lora_config(r=4, target_modules="all-linear", **extra)))
    assert targets == float_targets and not any(t.endswith(("decoder", "classifier")) for t in targets)


def test_all_linear_targets_a_layer_adapted_already_as_peft_does():
    from peft import inject_adapter_in_model

    from mono_quant.integrations.peft import register

    def adapted(model, adapter):
        return {n.split(".lora_A")[0] for n, _ in model.named_parameters() if f".lora_A.{adapter}" in n}

    def second_round(model):
        inject_adapter_in_model(register(lora_config(r=4, target_modules=["q_proj"])), model, adapter_name="first")
        return adapted(get_peft_model(model, lora_config(r=4, target_modules="all-linear")), "default")

    float_targets = second_round(hf_models.build("llama"))
    targets = second_round(mq.quantize(hf_models.build("llama"), "int8").model)
    assert targets == float_targets and any(t.endswith("q_proj") for t in targets)
