"""The hooks of a float layer that quantize() replaces.

- ``torch.nn.utils.weight_norm`` / ``spectral_norm`` (the hook-based ones) keep
  ``module.weight`` as a plain attribute that a forward pre-hook recomputes from
  ``weight_g`` / ``weight_v`` (``weight_orig`` / ``u`` / ``v``) at each call, so it is
  stale after a training step and, for spectral_norm, not yet normalized before
  the first forward.  The weight to quantize is the one the hook would compute:
  :func:`weight_in_use` asks the hook (eval semantics, no power iteration: the
  caller's ``u`` / ``v`` are never touched).
- The user's own forward (pre-)hooks and backward hooks are carried over to the
  quantized layer, as ``torch.ao.quantization`` does when it swaps a module;
  the norm hooks above are not (the quantized layer has no ``weight_g`` /
  ``weight_orig`` to recompute from), nor are state_dict hooks.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

__all__ = ["weight_in_use", "carry_hooks"]

_NORM_HOOKS = (WeightNorm, SpectralNorm)

# the per-module hook tables of nn.Module (the *_with_kwargs / always_called ones are
# keyed by the same handle ids as the table beside them)
_HOOK_TABLES = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_pre_hooks",
                "_backward_hooks")


def weight_in_use(module: nn.Module) -> torch.Tensor:
    """``module.weight`` as its next (eval-mode) forward would compute it."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm) and hook.name == "weight":
            with torch.no_grad():
                return hook.compute_weight(module)
        if isinstance(hook, SpectralNorm) and hook.name == "weight":
            with torch.no_grad():
                return hook.compute_weight(module, do_power_iteration=False)
    return module.weight


def carry_hooks(module: nn.Module, qmodule: nn.Module) -> None:
    """Give ``qmodule`` (new, hook-free) copies of ``module``'s forward and backward hook
    tables, less the weight-norm hooks; ``module``'s own tables are left as they are."""
    dropped = {key for key, hook in module._forward_pre_hooks.items() if isinstance(hook, _NORM_HOOKS)}
    for table in _HOOK_TABLES:
        hooks = getattr(module, table, None)
        if hooks:
            setattr(qmodule, table, OrderedDict((k, v) for k, v in hooks.items() if k not in dropped))
    if module._backward_hooks or module._backward_pre_hooks:
        qmodule._is_full_backward_hook = module._is_full_backward_hook
