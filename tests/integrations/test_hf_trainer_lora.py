"""transformers' Trainer trains LoRA adapters on a model loaded with MonoQuantConfig (it refused:
the quantizer said is_trainable False, though the adapters train as after quantize())."""
import warnings

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
import transformers  # noqa: E402

import hf_models  # noqa: E402

from mono_quant.integrations.peft import get_peft_model, lora_config  # noqa: E402


def test_trainer_trains_lora_on_a_model_loaded_quantized(tmp_path):
    model = hf_models.loaded_quantized("llama", tmp_path / "float", dtype="int8")
    assert model.hf_quantizer.is_trainable
    peft_model = get_peft_model(model, lora_config(r=4, target_modules=["q_proj", "v_proj"]))
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    ids = torch.randint(2, 128, (4, 8), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2,
                                          learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.Trainer(model=peft_model, args=args, train_dataset=data).train()
    changed = [n for n, p in peft_model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed and all("lora_" in n for n in changed)
