"""Tiny Hugging Face models built from configs with random weights (no downloads).

Each builder takes an optional ``seed`` and returns a model in eval mode; the
``inputs`` of a kind are token ids its forward takes.  Shapes are chosen so
int4's 32-column padding and group boundaries are exercised (hidden 64, MLP 96).
Import through ``pytest.importorskip("transformers")``: the package is a test
dependency only.
"""
from __future__ import annotations

import torch
import transformers

__all__ = ["KINDS", "build", "config_of", "inputs", "forward", "loaded_quantized"]

KINDS = ("bert", "gpt2", "llama", "t5")
_VOCAB = 128


def config_of(kind: str):
    """The tiny config of one model kind."""
    if kind == "bert":
        return transformers.BertConfig(vocab_size=_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=96, max_position_embeddings=64)
    if kind == "gpt2":
        return transformers.GPT2Config(vocab_size=_VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                       bos_token_id=0, eos_token_id=0)
    if kind == "llama":
        return transformers.LlamaConfig(vocab_size=_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if kind == "t5":
        return transformers.T5Config(vocab_size=_VOCAB, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                                     decoder_start_token_id=0)
    raise ValueError(f"unknown model kind {kind!r}")


_CLASSES = {"bert": "BertModel", "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
            "t5": "T5ForConditionalGeneration"}


def model_class(kind: str):
    return getattr(transformers, _CLASSES[kind])


def build(kind: str, seed: int = 0, device=None):
    """A freshly initialized tiny model of ``kind`` (on ``device``, e.g. "meta" for a skeleton)."""
    torch.manual_seed(seed)
    cls = model_class(kind)
    if device is not None:
        with torch.device(device):
            return cls(config_of(kind)).eval()
    return cls(config_of(kind)).eval()


def inputs(kind: str, batch: int = 2, length: int = 7, seed: int = 1) -> dict:
    """Keyword arguments of one forward call."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, _VOCAB, (batch, length), generator=g)
    if kind == "t5":
        return {"input_ids": ids, "decoder_input_ids": ids[:, :5]}
    return {"input_ids": ids}


def forward(model, kind: str, **kw) -> torch.Tensor:
    """The main output tensor (logits, or BERT's last hidden state)."""
    with torch.no_grad():
        out = model(**inputs(kind, **kw))
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def loaded_quantized(kind: str, folder, **config):
    """A tiny model of ``kind`` saved to ``folder`` in float, then loaded back with
    ``MonoQuantConfig(**config)`` (transformers' load report silenced)."""
    import warnings

    import mono_quant as mq

    build(kind).save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model_class(kind).from_pretrained(folder, quantization_config=mq.MonoQuantConfig(**config))
