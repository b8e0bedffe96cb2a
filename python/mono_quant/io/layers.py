"""Manifest layer entries: what save() records for a quantized module and
what the state_dict path records for a quantized ``*.weight`` entry."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from ..formats import get_format
from ..modules.registry import QuantizedModule
from ..orig_dtype import orig_dtype_of
from .dtypes import dtype_from_name, dtype_name
from .manifest import quantized_class, tensor_spec

__all__ = ["module_layer_entry", "quantized_layer_entries", "state_dict_layer_entry", "own_tensors",
           "guess_orig_dtype"]


def own_tensors(module: nn.Module) -> Dict[str, torch.Tensor]:
    """A module's own persistent parameters and buffers (not its children's)."""
    out = {}
    for name, p in module._parameters.items():
        if p is not None:
            out[name] = p.detach()
    for name, b in module._buffers.items():
        if b is not None and name not in module._non_persistent_buffers_set:
            out[name] = b.detach()
    return out


def quantized_layer_entries(model: nn.Module) -> List[Dict[str, Any]]:
    """The manifest entry of each QuantizedModule of ``model``, once, with every name it has
    (a shared layer's aliases), in ``named_modules`` order."""
    names_of: Dict[int, List[str]] = {}
    found = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, QuantizedModule):
            names_of.setdefault(id(m), []).append(name)
            found.setdefault(id(m), m)
    return [module_layer_entry(m, names_of[key]) for key, m in found.items()]


def module_layer_entry(module, names) -> Dict[str, Any]:
    """The manifest entry of a QuantizedModule found under ``names`` (first is its path).
    Raises TypeError for a class the registry doesn't know (it couldn't be loaded back)."""
    cls = type(module)
    if quantized_class(cls.__name__) is not cls:
        raise TypeError(f"{cls.__name__} at {names[0]!r} is not a registered quantized module; it cannot be saved")
    fmt = get_format(module.weight_format)
    orig = getattr(module, "orig_dtype", None)
    return {
        "name": names[0],
        "aliases": list(names[1:]),
        "class": cls.__name__,
        "type": cls.float_type.__name__,
        "dtype": module.weight_format,
        "scheme": fmt.scheme(getattr(module, "weight_symmetric", False)),
        "axis": fmt.saved_axis(module),
        "group_size": getattr(module, "weight_group_size", getattr(module, "group_size", None)),
        "shape": [int(d) for d in module.weight_shape],
        "orig_dtype": dtype_name(orig) if isinstance(orig, torch.dtype) else None,
        "init_kwargs": module.init_kwargs(),
        "attrs": module.get_state_attrs(),
        "tensors": {name: tensor_spec(t) for name, t in own_tensors(module).items()},
    }


def state_dict_layer_entry(layer, config, tensors: Mapping[str, torch.Tensor],
                           orig_dtype: Optional[torch.dtype], type_from: str = "shape") -> Dict[str, Any]:
    """The manifest entry of a quantized state_dict weight.

    ``layer`` is its LayerReport, ``tensors`` its output entries by local name
    (``weight_qdata``... or ``weight``), ``config`` the QuantConfig used; ``type_from``
    "shape" when ``layer.type`` was read off the weight's dims (state_dict_entry_plan), "module"
    when a model says what the layer is.
    """
    fmt = get_format(layer.dtype)
    symmetric = config.symmetric_for(layer.type)
    return {
        "name": layer.name,
        "type": layer.type,
        "dtype": layer.dtype,
        "scheme": fmt.scheme(symmetric),
        "axis": fmt.config_axis(config),
        "group_size": fmt.config_group_size(config),
        "shape": [int(d) for d in layer.shape],
        "orig_dtype": dtype_name(orig_dtype_of(orig_dtype)) if orig_dtype is not None else None,  # float8: float32
        "tensors": {name: tensor_spec(t) for name, t in tensors.items()},
        "type_from": type_from,
    }


def guess_orig_dtype(layer) -> Optional[torch.dtype]:
    """The float dtype a state_dict weight had: its report's ``orig_dtype``, else (a report made
    before it was recorded) from its byte count (None if ambiguous: float16 or bfloat16)."""
    if getattr(layer, "orig_dtype", None):
        return dtype_from_name(layer.orig_dtype)
    numel = math.prod(layer.shape)
    if not numel:
        return None
    return {4: torch.float32, 8: torch.float64}.get(layer.bytes_before // numel)
