"""Keeps a Hugging Face model's mono-quant layer list in step with its modules.

A model loaded with ``MonoQuantConfig`` carries, in ``config.quantization_config.layers``,
the manifest entry of every quantized layer: ``save_pretrained`` writes that list to
config.json and ``from_pretrained`` rebuilds exactly the layers it names.  When
``quantize()`` quantizes more of such a model (mixed precision: int4 MLPs from the load,
then int8 for the rest), the copy's list must name the new layers too; a stale list
would reload their buffers as UNEXPECTED keys and leave randomly initialized float
layers in their place, silently.  No transformers import here: quantize() calls this
for every model, and the check is by the config's ``quant_method``.

A Hugging Face model that ``quantize()`` quantized without such a config (loaded in float)
gets one the same way: without it ``save_pretrained`` wrote the quantized buffers and a
config.json that ``from_pretrained`` read as the float model's, which it then built
randomly initialized around UNEXPECTED keys, silently.
"""
from __future__ import annotations

import sys
from typing import Iterable, List

from torch import nn

from ..formats.base import INTEGER_BUFFERS, PACKED_BUFFERS
from ..io.layers import quantized_layer_entries
from ..io.manifest import check_layer_list
from ..io.validate import check_layer_fields

__all__ = ["refresh_layer_list", "check_config_layers", "unlisted_tensors", "is_hf_model"]

# integrations/transformers.py's QUANT_METHOD (importing it would import transformers)
_QUANT_METHOD = "mono_quant"


def is_hf_model(model: nn.Module) -> bool:
    transformers = sys.modules.get("transformers")  # (a model of its classes: already imported)
    return transformers is not None and isinstance(model, getattr(transformers, "PreTrainedModel", ()))


def refresh_layer_list(model: nn.Module, dtype: str = "int8") -> None:
    """Set ``model.config.quantization_config.layers`` to the entries of the model's quantized
    layers (each once, with its aliases) when that config is mono-quant's; give a Hugging Face
    model without a quantization config one (``MonoQuantConfig(dtype, layers=...)``: the layers
    say what each is, ``dtype`` is informative) when it has quantized layers; else do nothing.
    ``model`` is quantize()'s copy: its config is its own."""
    hf_config = getattr(model, "config", None)
    config = getattr(hf_config, "quantization_config", None)
    if config is None and is_hf_model(model):
        layers = quantized_layer_entries(model)
        if layers:
            from .transformers import MonoQuantConfig
            hf_config.quantization_config = MonoQuantConfig(dtype, layers=layers)
            hf_config.quantization_config.describe(model)  # (save_pretrained writes the layers as they are then)
        return
    if getattr(config, "quant_method", None) != _QUANT_METHOD or not hasattr(config, "layers"):
        return
    config.layers = quantized_layer_entries(model)
    if hasattr(config, "describe"):
        config.describe(model)


def check_config_layers(layers) -> None:
    """Raise CheckpointError unless ``layers`` (a config.json's ``quantization_config.layers``,
    untrusted as a file's manifest is) is a list of saved-layer entries whose every field has
    the type and value a mono-quant manifest allows: the quantizer indexes and builds modules
    from them before any tensor is read."""
    where = "config.json quantization_config.layers: "
    check_layer_list(layers, "model", where, what="bad entry")
    for layer in layers:
        check_layer_fields("model", layer, where)


def unlisted_tensors(layers, keys: Iterable[str]) -> List[str]:
    """The checkpoint ``keys`` that belong to a quantized layer the (checked) ``layers`` do not
    account for: a tensor under a listed layer's name that its entry does not list (its bias),
    or an integer / packed weight buffer under a name no entry lists.  transformers would
    report them UNEXPECTED and leave the layer without its bias, or a float layer randomly
    initialized, silently."""
    listed = {}
    for entry in layers:
        for name in [entry["name"]] + list(entry.get("aliases", [])):
            listed[name] = set(entry["tensors"])
    quantized_names = set(INTEGER_BUFFERS) | set(PACKED_BUFFERS)
    out = []
    for key in keys:
        prefix, _, local = key.rpartition(".")
        if (local not in listed[prefix]) if prefix in listed else (local in quantized_names):
            out.append(key)
    return out
