"""``load_state_dict`` into a quantized model is all or nothing for its quantized layers.

Each quantized layer checks its incoming weight tensors before torch copies them
(``load_checks.py``), but torch loads a model layer by layer: a bad tensor in the tenth layer
used to raise after the first nine were overwritten, leaving a model that is half the old
weights and half the new ones.  The models :func:`mono_quant.quantize` and
:func:`mono_quant.load` return carry a load pre-hook on their root that checks every quantized
layer's tensors first (torch runs a module's pre-hooks before it loads the module or any child).
The layers' own checks then skip what the root already checked (the same tensor objects), so a
load costs one check per layer as before; a load into a single layer (``qmodel.fc.load_state_dict``)
still checks that layer itself.  A layer that appears under two names is left to its own
check at each visit (the second visit's tensors are judged against what the first one loaded).
What the root checked is held by weak references: a load that raises part-way keeps no
checkpoint tensors alive."""
from __future__ import annotations

import weakref
from collections import Counter
from contextvars import ContextVar
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from .load_checks import check_loaded_weight, incoming_weight_tensors

__all__ = ["guard_whole_loads", "already_checked"]

# (id(layer), prefix) -> (weak reference to the layer, {key: weak reference to the incoming
# tensor, or None where absent}), during one load: an entry counts only while the very objects
# it names are alive, so a reused id can never match.
_CHECKED: ContextVar[Optional[Dict[Tuple[int, str], tuple]]] = ContextVar("mono_quant_checked_load", default=None)


def guard_whole_loads(model: Optional[nn.Module]) -> None:
    """Give ``model`` (the root of a quantized model) the all-or-nothing check; idempotent."""
    from .registry import QuantizedModule
    if not isinstance(model, nn.Module) or isinstance(model, QuantizedModule):
        return  # (a single quantized layer checks itself before it loads)
    hooks = list(model._load_state_dict_pre_hooks.values())
    if any(getattr(h, "hook", None) is _check_every_layer for h in hooks):
        return
    # the private spelling: the public register_load_state_dict_pre_hook only exists from torch 2.5
    model._register_load_state_dict_pre_hook(_check_every_layer, with_module=True)
    model.register_load_state_dict_post_hook(_forget_checked)


def already_checked(module: nn.Module, state_dict: Mapping, prefix: str) -> bool:
    """Whether the root of this load checked ``module``'s incoming tensors (these very objects)."""
    checked = _CHECKED.get()
    if not checked:
        return False
    entry = checked.get((id(module), prefix))
    if entry is None or entry[0]() is not module:
        return False
    for key, ref in entry[1].items():
        expected = None if ref is None else ref()
        if (ref is not None and expected is None) or state_dict.get(key) is not expected:
            return False
    return True


def _check_every_layer(root: nn.Module, state_dict: Mapping, prefix: str, local_metadata: Mapping,
                       *_ignored) -> None:
    from .registry import QuantizedModule  # (registry imports the per-layer check from load_checks)
    _CHECKED.set(None)
    assign = local_metadata.get("assign_to_params_buffers", False)
    checked: Dict[Tuple[int, str], tuple] = {}
    base = prefix[:-1] if prefix else ""
    layers = [(name, m) for name, m in root.named_modules(prefix=base, remove_duplicate=False)
              if isinstance(m, QuantizedModule)]
    visits = Counter(id(m) for _, m in layers)
    for name, module in layers:
        if visits[id(module)] > 1:
            continue  # shared: each visit checks against what the visit before it loaded
        layer_prefix = name + "." if name else ""
        check_loaded_weight(module, state_dict, layer_prefix, assign)  # raises before anything is copied
        tensors = incoming_weight_tensors(module, state_dict, layer_prefix)
        if all(t is None or isinstance(t, torch.Tensor) for t in tensors.values()):  # (else: its own check)
            checked[(id(module), layer_prefix)] = (weakref.ref(module), {
                key: None if t is None else weakref.ref(t) for key, t in tensors.items()})
    _CHECKED.set(checked)


def _forget_checked(_root: nn.Module, _incompatible_keys) -> None:
    _CHECKED.set(None)
