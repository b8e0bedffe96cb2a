"""The float names of a saved composite's tensors (nn.LSTM / GRU / RNN, nn.MultiheadAttention).

A quantized composite is saved as its children, ordinary layers (``lstm.ih_l0``, ``attn.in_proj``);
``load(path, model=skeleton)`` rebuilds it from the skeleton's float module.  Without a skeleton,
``QuantizedStateDict.dequantize()`` wrote the children's names, which no float model loads
(``weight_ih_l0`` / ``bias_ih_l0``, ``in_proj_weight`` / ``in_proj_bias``).  The manifest's
``composites`` (``{path: float type}``) says where composites were, and this file maps each child's
weight and bias back to the float module's parameter names."""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, MutableMapping, Sequence, Tuple

import torch
from torch import nn

from ..modules.composite import QuantizedComposite
from .errors import CheckpointError

__all__ = ["COMPOSITE_TYPES", "composite_entries", "check_composites", "composite_key_map", "rename_composite_tensors"]

#: the float types a saved composite may have
COMPOSITE_TYPES = ("LSTM", "GRU", "RNN", "MultiheadAttention")

_RNN_CHILD = re.compile(r"(ih|hh|hr)_(l\d+(?:_reverse)?)")


def composite_entries(model: nn.Module) -> Dict[str, str]:
    """``{path: float type name}`` of every quantized composite of ``model`` (each name it has)."""
    return {name: m.float_type.__name__ for name, m in model.named_modules(remove_duplicate=False)
            if isinstance(m, QuantizedComposite) and m.float_type.__name__ in COMPOSITE_TYPES}


def check_composites(value: Any, where: str) -> None:
    """CheckpointError unless ``value`` maps paths to COMPOSITE_TYPES."""
    if not (isinstance(value, dict) and all(isinstance(k, str) and v in COMPOSITE_TYPES for k, v in value.items())):
        raise CheckpointError(f"{where}bad manifest: composites must map module paths to one of {COMPOSITE_TYPES}")


def composite_key_map(keys: Sequence[str], composites: Mapping[str, str]) -> Dict[str, Tuple[str, ...]]:
    """``{name: the keys it is made of}`` for every key of a dequantized float state_dict, in order:
    each composite child's ``weight`` / ``bias`` under the float module's parameter name (one key), a
    MultiheadAttention's q / k / v biases joined into its ``in_proj_bias`` (three keys, q | k | v), every
    other key as it is."""
    renames: Dict[str, str] = {}
    joined: Dict[str, List[str]] = {}  # in_proj_bias -> the q / k / v bias keys
    for path, kind in composites.items():
        prefix = f"{path}." if path else ""
        qkv_bias = []
        for key in keys:
            if not key.startswith(prefix):
                continue
            child, _, local = key[len(prefix):].rpartition(".")
            if local not in ("weight", "bias") or "." in child:
                continue
            if kind == "MultiheadAttention":
                if child == "in_proj":
                    renames[key] = f"{prefix}in_proj_{local}"
                elif child in ("q_proj", "k_proj", "v_proj"):
                    if local == "weight":
                        renames[key] = f"{prefix}{child}_weight"
                    else:
                        qkv_bias.append(key)
            elif _RNN_CHILD.fullmatch(child):
                part, tail = _RNN_CHILD.fullmatch(child).groups()
                renames[key] = f"{prefix}{local}_{part}_{tail}"
        if len(qkv_bias) == 3:  # torch's one in_proj_bias, q | k | v
            joined[f"{prefix}in_proj_bias"] = sorted(qkv_bias, key=lambda k: "qkv".index(k[len(prefix)]))
    parts = {k: name for name, ks in joined.items() for k in ks}
    out: Dict[str, Tuple[str, ...]] = {}
    for key in keys:
        if key in parts:
            if key == joined[parts[key]][0] or parts[key] not in out:
                out.setdefault(parts[key], tuple(joined[parts[key]]))
            continue
        out[renames.get(key, key)] = (key,)
    return out


def rename_composite_tensors(state: MutableMapping[str, torch.Tensor], composites: Mapping[str, str]) -> None:
    """Rename, in ``state`` (a dequantized float state_dict), each composite child's ``weight`` /
    ``bias`` to the float module's parameter names (the children's order kept; composite_key_map)."""
    mapping = composite_key_map(list(state), composites)
    renamed = {name: state[ks[0]] if len(ks) == 1 else torch.cat([state[k] for k in ks])
               for name, ks in mapping.items()}
    state.clear()
    state.update(renamed)
