"""LoRA adapters (PEFT) on quantized layers: mono_quant.integrations.peft.

Tiny models, a few optimizer steps: a fresh adapter gives the quantized model's
outputs exactly, training moves only the adapters and lowers the loss, the
quantized base stays bit for bit, adapters save and load, merging is refused."""
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
import mono_quant as mq  # noqa: E402
from mono_quant.integrations.peft import (LoraMergeError, QuantizedLoraLinear, from_pretrained,  # noqa: E402
                                          get_peft_model, lora_config, register)

CASES = {"int8-dynamic": dict(dtype="int8", activations="dynamic"),
         "int8-weight-only": dict(dtype="int8", activations=None),
         "int4": dict(dtype="int4"),
         "fp16": dict(dtype="fp16")}
TARGETS = ["0", "2", "4"]


def _float_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 5)).eval()


def _quantized(case, seed=0):
    return mq.quantize(_float_mlp(seed), **CASES[case]).model


def _task(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 24, generator=g), torch.randn(32, 5, generator=g)


def _base_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}


def _train(model, inputs, loss_of, steps=15, lr=1e-2):
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_of(model, inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _mse(model, task):
    x, y = task
    return nn.functional.mse_loss(model(x), y)


def test_peft_alone_refuses_quantized_layers():
    # why the registration exists: PEFT only wraps the layer types it knows
    with pytest.raises(ValueError, match="not supported"):
        peft.get_peft_model(_quantized("int8-dynamic"), peft.LoraConfig(target_modules=TARGETS, r=4))


@pytest.mark.parametrize("case", list(CASES))
def test_fresh_adapter_gives_the_quantized_outputs_exactly(case):
    qmodel = _quantized(case)
    x, _ = _task()
    with torch.no_grad():
        expected = qmodel(x)
    model = get_peft_model(qmodel, lora_config(target_modules=TARGETS, r=4))
    assert all(isinstance(model.base_model.model[int(t)], QuantizedLoraLinear) for t in TARGETS)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    model.train()  # with autograd recording (B is a trainable zero): the op route, same numbers
    assert torch.equal(model(x).detach(), expected)


@pytest.mark.parametrize("case", list(CASES))
def test_lora_trains_only_the_adapters_and_the_loss_goes_down(case):
    model = get_peft_model(_quantized(case), lora_config(target_modules=TARGETS, r=4, lora_alpha=8))
    before = _base_state(model)
    task = _task()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)

    losses = _train(model, task, _mse)
    assert losses[-1] < 0.7 * losses[0], losses
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    after = model.state_dict()
    for key, value in before.items():  # quantized codes, scales, packed buffers, frozen biases
        assert torch.equal(after[key], value), key


@pytest.mark.parametrize("case", list(CASES))
def test_adapter_saves_and_loads_on_a_quantized_base(case, tmp_path):
    model = get_peft_model(_quantized(case), lora_config(target_modules=TARGETS, r=4))
    _train(model, _task(), _mse, steps=5)
    model.eval()
    x, _ = _task(seed=2)
    with torch.no_grad():
        expected = model(x)
    model.save_pretrained(tmp_path)

    with pytest.raises(ValueError, match="not supported"):  # a config read from disk has no registration
        peft.PeftModel.from_pretrained(_quantized(case), tmp_path)
    loaded = from_pretrained(_quantized(case), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert not any(p.requires_grad for p in loaded.parameters())  # inference, as PeftModel.from_pretrained
    trainable = from_pretrained(_quantized(case), tmp_path, is_trainable=True)
    assert {n for n, p in trainable.named_parameters() if p.requires_grad}


def test_adapter_trained_on_quantized_base_merges_on_the_float_model(tmp_path):
    # the documented merge route: train on the quantized model, merge into the float one, quantize again
    model = get_peft_model(_quantized("int8-weight-only"), lora_config(target_modules=TARGETS, r=4))
    _train(model, _task(), _mse, steps=10)
    model.eval()
    model.save_pretrained(tmp_path)
    x, _ = _task(seed=2)
    with torch.no_grad():
        quantized_with_adapter = model(x)
        merged = peft.PeftModel.from_pretrained(_float_mlp(), tmp_path).merge_and_unload()
        assert isinstance(merged[0], nn.Linear)
        err = (merged(x) - quantized_with_adapter).pow(2).mean() / quantized_with_adapter.pow(2).mean()
    assert err < 1e-3  # the two differ by the base weights' int8 rounding only


def test_merge_is_refused_and_leaves_the_model_working():
    qmodel = _quantized("int4")
    x, _ = _task()
    with torch.no_grad():
        base = qmodel(x)
    model = get_peft_model(qmodel, lora_config(target_modules=TARGETS, r=4, init_lora_weights=False))
    with torch.no_grad():
        expected = model(x)
        assert not torch.equal(expected, base)  # a non-zero adapter: merging would matter
        with model.disable_adapter():
            assert torch.equal(model(x), base)
    with pytest.raises(LoraMergeError, match="merge_and_unload"):
        model.merge_and_unload()
    with pytest.raises(NotImplementedError, match="float model"):
        model.base_model.model[0].merge()
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_lora_variants_and_other_adapter_types_are_refused_clearly():
    with pytest.raises(ValueError, match="only vanilla LoRA"):
        get_peft_model(_quantized("int8-dynamic"), lora_config(target_modules=TARGETS, r=4, use_dora=True))
    with pytest.raises(TypeError, match="only LoRA"):
        register(peft.IA3Config(target_modules=TARGETS, feedforward_modules=[]))


def test_float_layers_keep_peft_s_own_lora_layer():
    qmodel = mq.quantize(_float_mlp(), dtype="int8", exclude=["2"]).model
    model = get_peft_model(qmodel, lora_config(target_modules=TARGETS, r=4))
    layers = model.base_model.model
    assert isinstance(layers[0], QuantizedLoraLinear)
    assert type(layers[2]) is peft.tuners.lora.layer.Linear


def test_package_imports_without_peft():
    code = "import sys; sys.modules['peft'] = None; import mono_quant, mono_quant.integrations; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


# --- tiny Hugging Face models from configs ---------------------------------------------------------------------

pytest.importorskip("transformers")
import hf_models  # noqa: E402

HF_CASES = [("llama", "int8", ["q_proj", "v_proj"]), ("llama", "int4", ["q_proj", "v_proj", "down_proj"]),
            ("gpt2", "int8", ["c_attn", "c_fc"]), ("gpt2", "int4", ["c_attn"])]


def _causal_lm_loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")  # transformers' deprecation, hit by peft
@pytest.mark.parametrize("kind,dtype,targets", HF_CASES, ids=[f"{k}-{d}" for k, d, _ in HF_CASES])
def test_hf_model_quantized_then_lora(kind, dtype, targets, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GPT-2's tied lm_head stays float, as the warning says
        qmodel = mq.quantize(hf_models.build(kind), dtype=dtype).model
    expected = hf_models.forward(qmodel, kind)
    model = get_peft_model(qmodel, lora_config(target_modules=targets, r=4, lora_alpha=16,
                                               fan_in_fan_out=kind == "gpt2", task_type="CAUSAL_LM"))
    wrapped = [m for m in model.modules() if isinstance(m, QuantizedLoraLinear)]
    assert len(wrapped) == len(targets) * hf_models.config_of(kind).num_hidden_layers
    assert torch.equal(hf_models.forward(model, kind), expected)

    before = _base_state(model)
    ids = hf_models.inputs(kind, batch=4, length=12)["input_ids"]
    losses = _train(model, ids, _causal_lm_loss, steps=8, lr=3e-2)
    assert losses[-1] < losses[0] - 0.05, losses
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())

    model.eval()
    trained = hf_models.forward(model, kind)
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = mq.quantize(hf_models.build(kind), dtype=dtype).model
    assert torch.equal(hf_models.forward(from_pretrained(fresh, tmp_path), kind), trained)


def test_merging_adapters_on_float_and_quantized_layers_merges_none(tmp_path):
    """PEFT merges layer by layer: the float layer's adapter was merged (by merge_and_unload also
    unloaded) before the quantized layer refused.  Refused first now: nothing changes."""
    qmodel = mq.quantize(_float_mlp(), "int8", exclude=["0"]).model
    x, _ = _task()
    model = get_peft_model(qmodel, lora_config(target_modules=TARGETS, r=4, init_lora_weights=False))
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(mq.quantize(_float_mlp(), "int8", exclude=["0"]).model, tmp_path)
    for peft_model in (model, loaded):
        with torch.no_grad():
            expected = peft_model(x)
        for merge in (peft_model.merge_adapter, peft_model.merge_and_unload):
            with pytest.raises(LoraMergeError, match=r"quantized layers \(2: '2', '4'\); nothing was merged"):
                merge()
            inner = peft_model.base_model.model
            assert not inner[0].merged and type(inner[0]).__name__ == "Linear" and hasattr(inner[0], "lora_A")
            with torch.no_grad():
                assert torch.equal(peft_model(x), expected)


def test_a_peft_model_is_freed_on_del():
    """Its guards (add_adapter, the tuner's merge check) held it through partials: a reference cycle."""
    import gc
    import weakref

    model = get_peft_model(_quantized("int8-dynamic"), lora_config(target_modules=TARGETS, r=4))
    gc.disable()
    try:
        ref = weakref.ref(model)
        del model
        assert ref() is None
    finally:
        gc.enable()
