"""``resize_token_embeddings`` of a Hugging Face model whose head or input embeddings are quantized:
refused before anything changes.

transformers resizes the input embeddings first and only then finds that the output head is no
``nn.Linear`` (its TypeError), leaving a model whose embeddings and head disagree on the
vocabulary.  Each Hugging Face model quantize() returns, or from_pretrained loads with a
MonoQuantConfig, gets this guard as its own ``resize_token_embeddings`` (an instance attribute
holding the model weakly, bound_guard.py: the class's method runs when nothing quantized is in the
way).  No transformers import here.
"""
from __future__ import annotations

from torch import nn

from .bound_guard import BoundGuard
from .hf_layer_list import is_hf_model

__all__ = ["guard_resize_token_embeddings"]

_NAME = "resize_token_embeddings"


def _quantized(module) -> bool:
    from ..mixed import quantized_layers  # (lazy: mixed imports the module registry)

    return module is not None and bool(quantized_layers({id(module): module}))


def _guarded_resize(model: nn.Module, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing: bool = True):
    if new_num_tokens is not None or pad_to_multiple_of is not None:
        parts = [("output head", getattr(model, "get_output_embeddings", lambda: None)()),
                 ("input embeddings", getattr(model, "get_input_embeddings", lambda: None)())]
        names = {id(m): n for n, m in model.named_modules()}
        held = [f"{what} {names.get(id(m), '?')!r} ({type(m).__name__})" for what, m in parts if _quantized(m)]
        if held:
            raise TypeError(
                f"resize_token_embeddings: {type(model).__name__}'s {' and '.join(held)} "
                f"{'is' if len(held) == 1 else 'are'} quantized, and transformers resizes only float layers (it "
                f"would grow the embeddings, then fail on the head); nothing was changed. Resize the float model, "
                f"then quantize it, or keep those layers float (exclude=[...])")
    return type(model).resize_token_embeddings(model, new_num_tokens, pad_to_multiple_of, mean_resizing)


def guard_resize_token_embeddings(model: nn.Module) -> None:
    """Give a Hugging Face model the guard (again: a copy's guard must call the copy)."""
    if is_hf_model(model) and callable(getattr(type(model), _NAME, None)):
        model.__dict__[_NAME] = BoundGuard(_guarded_resize, model)
