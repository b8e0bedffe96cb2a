"""The model's name of each tensor of a Hugging Face checkpoint.

transformers 5 renames checkpoint keys on load for many architectures (ViT, DeiT, BEiT, Dinov2,
Swin, Segformer, ...: ``encoder.layer.0.attention.attention.query`` is the model's
``layers.0.attention.q_proj``), adds or strips the ``base_model_prefix`` (a GPT-2 folder stored
without ``transformer.``), and ``save_pretrained`` reverts the renaming for every state_dict key,
mono-quant's quantized buffers included.  mono-quant's layer lists are in the model's names, so a
file's keys are mapped before they are compared with them.  The mapping is transformers' own (the
call its loader makes), so what is computed here is what ``from_pretrained`` will do.

Some entries of transformers' mapping are not renamings but WeightConverters (tensor ops: the
fused ``Wqkv`` of NomicBert split in three, MoE experts merged into one tensor): a quantized
layer's packed buffers can't go through them; the caller gets the converter's pattern to refuse.

transformers is imported lazily: quantize_checkpoint imports this for every HF folder.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Optional, Tuple

from torch import nn

__all__ = ["model_key_map"]


def model_key_map(model: nn.Module, keys: Iterable[str], hf_quantizer=None,
                  extra_model_keys: Iterable[str] = ()) -> Dict[str, Tuple[str, Optional[str]]]:
    """``{checkpoint key: (model key, converter pattern or None)}``: the name ``from_pretrained``
    gives each of ``keys`` on ``model`` (renamings, base_model_prefix added or stripped), and the
    source pattern of the WeightConverter that matched it (a tensor op would run on it), else None.

    ``hf_quantizer``: the quantizer of the load, which may add conversions of its own.
    ``extra_model_keys``: model keys not in ``model.state_dict()`` yet (the quantized buffers,
    before the layers are swapped in): whether a prefix is added or stripped depends on them.
    """
    keys = list(keys)
    meta = dict.fromkeys(model.state_dict().keys(), True)
    meta.update(dict.fromkeys(extra_model_keys, True))
    prefix = getattr(model, "base_model_prefix", "") or ""
    try:  # transformers >= 5: the conversion mapping of the model and of its sub-models
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # transformers 4.x: a class attribute of regexes
        return _v4_key_map(model, keys, meta, prefix)
    conversions = get_model_conversion_mapping(model, hf_quantizer=hf_quantizer)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    out: Dict[str, Tuple[str, Optional[str]]] = {}
    # as core_model_loading.convert_and_load_state_dict_in_model does, in its order (a group of
    # renamings is activated by the first key of the group it sees)
    for key in sorted(keys, key=_natural_key()):
        new, pattern = rename_source_key(key, renamings, converters, prefix, meta)
        if new not in meta and key in meta:  # the loader's second try: the prefix only
            new, pattern = rename_source_key(key, [], [], prefix, meta)
        out[key] = (new, pattern)
    return {key: out[key] for key in keys}


def _natural_key():
    try:
        from transformers.core_model_loading import dot_natural_key
        return dot_natural_key
    except ImportError:  # (a transformers 5 without it: file order)
        return lambda key: 0


def _v4_key_map(model: nn.Module, keys, meta, prefix: str) -> Dict[str, Tuple[str, Optional[str]]]:
    """transformers 4.x's loader: the first matching regex of ``_checkpoint_conversion_mapping``,
    then the base_model_prefix added or stripped when the model has the result that way."""
    mapping = getattr(model, "_checkpoint_conversion_mapping", None) or {}
    out = {}
    for key in keys:
        new = key
        for pattern, replacement in mapping.items():
            new, n = re.subn(pattern, replacement, new)
            if n:
                break
        if prefix and new not in meta:
            if new.startswith(prefix + ".") and new[len(prefix) + 1:] in meta:
                new = new[len(prefix) + 1:]
            elif f"{prefix}.{new}" in meta:
                new = f"{prefix}.{new}"
        out[key] = (new, None)
    return out
