"""LoRA (PEFT) on quantized Conv2d, Conv1d and Embedding layers: PEFT's own LoRA
Conv2d / Conv1d / Embedding over the quantized base (mono_quant.integrations.peft).
A fresh adapter gives the quantized outputs exactly, gradients reach lora_A and lora_B and
the loss goes down while the quantized base stays bit for bit, the adapter is the one PEFT
builds for the float layer (it loads on the float model and gives its outputs up to the
base's quantization), and merging raises LoraMergeError."""
import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
import mono_quant as mq  # noqa: E402
from mono_quant.integrations.peft import (LoraMergeError, QuantizedLoraConv1d, QuantizedLoraConv2d,  # noqa: E402
                                          QuantizedLoraEmbedding, from_pretrained, get_peft_model, lora_config)

CASES = {"int8-dynamic": dict(dtype="int8", activations="dynamic"),
         "int8-weight-only": dict(dtype="int8", activations=None),
         "int4": dict(dtype="int4", group_size=32),
         "fp16": dict(dtype="fp16")}


class _Cnn2d(nn.Module):
    targets, lora_type = ["a", "b"], QuantizedLoraConv2d

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 32, 3, padding=1), nn.Conv2d(32, 32, 3, stride=2)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.a(x))).mean((2, 3)))

    @staticmethod
    def inputs(g):
        return torch.randn(8, 4, 9, 9, generator=g)


class _Cnn1d(nn.Module):
    targets, lora_type = ["a", "b"], QuantizedLoraConv1d

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv1d(4, 32, 3, padding="same"), nn.Conv1d(32, 32, 5, stride=2)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.a(x))).mean(2))

    @staticmethod
    def inputs(g):
        return torch.randn(8, 4, 20, generator=g)


class _Bag(nn.Module):
    targets, lora_type = ["embed"], QuantizedLoraEmbedding

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 64, padding_idx=0)
        self.head = nn.Linear(64, 5)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(1))

    @staticmethod
    def inputs(g):
        return torch.randint(0, 50, (8, 6), generator=g)


MODELS = {"conv2d": _Cnn2d, "conv1d": _Cnn1d, "embedding": _Bag}


def _float(kind, seed=0):
    torch.manual_seed(seed)
    return MODELS[kind]().eval()


def _quantized(kind, case, seed=0):
    result = mq.quantize(_float(kind, seed), embeddings=kind == "embedding", min_weight_numel=0, **CASES[case])
    targets = MODELS[kind].targets
    assert not [s for s in result.skipped if s.name in targets]
    return result.model


def _task(kind, seed=1):
    g = torch.Generator().manual_seed(seed)
    return MODELS[kind].inputs(g), torch.randn(8, 5, generator=g)


def _mse(model, task):
    x, y = task
    return nn.functional.mse_loss(model(x), y)


RUNS = [(kind, case) for kind in MODELS for case in CASES]


@pytest.mark.parametrize("kind,case", RUNS, ids=[f"{k}-{c}" for k, c in RUNS])
def test_fresh_adapter_exact_then_trains_with_the_base_frozen(kind, case):
    qmodel = _quantized(kind, case)
    x, _ = task = _task(kind)
    with torch.no_grad():
        expected = qmodel(x)
    model = get_peft_model(qmodel, lora_config(target_modules=MODELS[kind].targets, r=4, lora_alpha=8))
    layers = [model.base_model.model.get_submodule(t) for t in MODELS[kind].targets]
    assert all(type(layer) is MODELS[kind].lora_type for layer in layers)
    assert repr(layers[0]).startswith(f"lora.{MODELS[kind].lora_type.__name__}(")
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = _mse(model, task)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    for name, p in model.named_parameters():  # gradients reach both factors of every adapter, nothing else
        assert (p.grad is not None and bool(p.grad.abs().sum() > 0)) == (name in trainable), name
    assert any("lora_A" in n or "lora_embedding_A" in n for n in trainable)
    assert any("lora_B" in n or "lora_embedding_B" in n for n in trainable)
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


@pytest.mark.parametrize("kind", list(MODELS))
def test_adapter_is_peft_s_float_adapter(kind, tmp_path):
    # trained on the quantized base, saved, loaded on the float model and on another quantized base
    model = get_peft_model(_quantized(kind, "int8-weight-only"),
                           lora_config(target_modules=MODELS[kind].targets, r=4, init_lora_weights=False))
    model.eval()
    x, _ = _task(kind, seed=2)
    with torch.no_grad():
        expected = model(x)
        model.save_pretrained(tmp_path)
        on_float = peft.PeftModel.from_pretrained(_float(kind), tmp_path)(x)
        err = (on_float - expected).pow(2).mean() / expected.pow(2).mean()
        assert err < 1e-3  # the base weights' int8 rounding only
        again = from_pretrained(_quantized(kind, "int8-weight-only"), tmp_path)
        assert torch.equal(again(x), expected)


@pytest.mark.parametrize("kind", list(MODELS))
def test_merge_is_refused_and_the_model_keeps_working(kind):
    model = get_peft_model(_quantized(kind, "int4"),
                           lora_config(target_modules=MODELS[kind].targets, r=4, init_lora_weights=False))
    x, _ = _task(kind)
    with torch.no_grad():
        expected = model(x)
        with pytest.raises(LoraMergeError, match="merge on the float model"):
            model.merge_and_unload()
        with pytest.raises(NotImplementedError):
            model.merge_adapter()
        assert torch.equal(model(x), expected)
        with pytest.warns(UserWarning, match="Already unmerged"):  # nothing merged: PEFT's no-op
            model.unmerge_adapter()
        assert torch.equal(model(x), expected)


def test_lora_variants_refused_on_quantized_convs_and_embeddings():
    for kind in ("conv2d", "embedding"):
        with pytest.raises(ValueError, match="only vanilla LoRA runs on quantized layers"):
            get_peft_model(_quantized(kind, "int8-dynamic"),
                           lora_config(target_modules=MODELS[kind].targets, r=4, use_dora=True))


def test_lora_on_the_projections_of_quantized_attention_and_lstm():
    torch.manual_seed(3)
    qmodel = mq.quantize(nn.ModuleDict({"attn": nn.MultiheadAttention(32, 4), "lstm": nn.LSTM(32, 32)})).model
    model = get_peft_model(qmodel, lora_config(r=4, target_modules=["in_proj", "out_proj", "ih_l0"],
                                               init_lora_weights=False))
    inner = model.base_model.model
    x = torch.randn(5, 2, 32)
    (inner["attn"](x, x, x)[0] + inner["lstm"](x)[0]).pow(2).mean().backward()
    with_grad = sorted(n.split(".lora_")[0] for n, p in model.named_parameters() if p.grad is not None)
    assert with_grad == ["base_model.model.attn.in_proj"] * 2 + ["base_model.model.attn.out_proj"] * 2 + \
        ["base_model.model.lstm.ih_l0"] * 2
    with pytest.raises(ValueError, match="not supported"):  # the composite itself: target its projections
        get_peft_model(mq.quantize(nn.ModuleDict({"attn": nn.MultiheadAttention(32, 4)})).model,
                       lora_config(r=4, target_modules=["attn"]))
