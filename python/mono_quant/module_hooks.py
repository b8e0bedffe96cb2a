"""The hooks of a float layer that quantize() replaces.

- ``torch.nn.utils.weight_norm`` / ``spectral_norm`` (the hook-based ones) keep
  ``module.weight`` as a plain attribute that a forward pre-hook recomputes from
  ``weight_g`` / ``weight_v`` (``weight_orig`` / ``u`` / ``v``) at each call, so it is
  stale after a training step and, for spectral_norm, not yet normalized before
  the first forward.  The weight to quantize is the one the hook would compute:
  :func:`weight_in_use` asks the hook (eval semantics, no power iteration: the
  caller's ``u`` / ``v`` are never touched).
- ``torch.nn.utils.prune`` does the same with ``weight_orig * weight_mask`` (and
  may prune ``bias`` too): the tensor quantized is the masked one.
- The user's own forward (pre-)hooks and backward hooks are carried over to the
  quantized layer, as ``torch.ao.quantization`` does when it swaps a module;
  the norm and pruning hooks above are not (the quantized layer has no
  ``weight_g`` / ``weight_orig`` / ``weight_mask`` to recompute from), nor are
  ``torch.ao.quantization.prepare``'s observer hooks (they read an
  ``activation_post_process`` child the quantized layer does not have; torch's
  own ``convert`` drops them too), nor state_dict hooks.
- A layer left float keeps its norm or pruning hook in the copy; the attribute the hook
  computes is copied recomputed and detached (:func:`hook_computed_tensors`): deepcopy
  refuses ``weight_orig * weight_mask``, a tensor with a grad_fn.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

__all__ = ["weight_in_use", "tensor_in_use", "hook_computed_names", "hook_computed_tensors", "hook_computed_copies",
           "carry_hooks"]

_RECOMPUTING_HOOKS = (WeightNorm, SpectralNorm, BasePruningMethod)
# torch.ao.quantization.prepare's hooks (by name: importing torch.ao warns of its deprecation)
_OBSERVER_HOOKS = ("_observer_forward_hook", "_observer_forward_pre_hook")

# the per-module hook tables of nn.Module (the *_with_kwargs / always_called ones are
# keyed by the same handle ids as the table beside them)
_HOOK_TABLES = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_pre_hooks",
                "_backward_hooks")


def weight_in_use(module: nn.Module) -> torch.Tensor:
    """``module.weight`` as its next (eval-mode) forward would compute it."""
    return tensor_in_use(module, "weight")


def tensor_in_use(module: nn.Module, name: str) -> Optional[torch.Tensor]:
    """``getattr(module, name)`` as its next (eval-mode) forward would compute it (a norm or
    pruning hook recomputes it there: the attribute itself may be stale)."""
    for hook in module._forward_pre_hooks.values():
        with torch.no_grad():
            if isinstance(hook, WeightNorm) and hook.name == name:
                return hook.compute_weight(module)
            if isinstance(hook, SpectralNorm) and hook.name == name:
                return hook.compute_weight(module, do_power_iteration=False)
            if isinstance(hook, BasePruningMethod) and hook._tensor_name == name:
                return hook.apply_mask(module)  # (a PruningContainer's mask is the combined one)
    return getattr(module, name)


def hook_computed_names(module: nn.Module) -> List[str]:
    """The tensor attributes of ``module`` that a norm or pruning hook recomputes at each call."""
    names = [hook.name if isinstance(hook, (WeightNorm, SpectralNorm)) else hook._tensor_name
             for hook in module._forward_pre_hooks.values() if isinstance(hook, _RECOMPUTING_HOOKS)]
    return [name for name in dict.fromkeys(names) if isinstance(module.__dict__.get(name), torch.Tensor)]


def hook_computed_tensors(module: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """Name -> tensor of each of :func:`hook_computed_names`, as :func:`tensor_in_use` computes it
    (detached, a graph leaf)."""
    return OrderedDict((name, tensor_in_use(module, name)) for name in hook_computed_names(module))


def _dropped(hook) -> bool:
    """A hook the quantized layer must not run (see the module docstring)."""
    return isinstance(hook, _RECOMPUTING_HOOKS) or (
        getattr(hook, "__module__", None) == "torch.ao.quantization.quantize"
        and getattr(hook, "__name__", None) in _OBSERVER_HOOKS)


def carry_hooks(module: nn.Module, qmodule: nn.Module) -> None:
    """Give ``qmodule`` (new, hook-free) copies of ``module``'s forward and backward hook
    tables, less the norm, pruning and observer hooks; ``module``'s own tables are left as they are."""
    dropped = {key for table in ("_forward_pre_hooks", "_forward_hooks") for key, hook in
               getattr(module, table).items() if _dropped(hook)}
    for table in _HOOK_TABLES:
        hooks = getattr(module, table, None)
        if hooks:
            setattr(qmodule, table, OrderedDict((k, v) for k, v in hooks.items() if k not in dropped))
    if module._backward_hooks or module._backward_pre_hooks:
        qmodule._is_full_backward_hook = module._is_full_backward_hook


def hook_computed_copies(model: nn.Module, memo: Dict[int, nn.Module]) -> Dict[int, torch.Tensor]:
    """id -> copy of each tensor attribute a norm or pruning hook computes on a module the copy keeps
    (a pruned layer left float): deepcopy refuses ``weight_orig * weight_mask``, a tensor with a
    grad_fn, so the copy holds it recomputed and detached; its hook recomputes it at each call from
    the copy's own ``weight_orig`` / ``weight_mask``, as the original's does."""
    copies: Dict[int, torch.Tensor] = {}
    seen, stack = set(), [model]
    while stack:
        module = stack.pop()
        if id(module) in seen or id(module) in memo:  # (a replaced layer's insides are not copied)
            continue
        seen.add(id(module))
        for name, tensor in hook_computed_tensors(module).items():
            copies[id(module.__dict__[name])] = tensor
        stack.extend(child for child in module._modules.values() if child is not None)
    return copies
