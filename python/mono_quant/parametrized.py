"""Layers whose weight is a ``torch.nn.utils.parametrize`` parametrization
(``parametrizations.weight_norm`` / ``spectral_norm`` / ``orthogonal``, or the user's own).

Such a module is an instance of a class torch makes on the fly
(``ParametrizedLinear``, a subclass of ``nn.Linear``) whose ``weight`` is computed
from ``parametrizations.weight.original*`` at each access.  quantize() replaces it
like the plain layer, with the weight the float model computes in eval mode
(spectral_norm's power iteration never runs: the caller's ``u`` / ``v`` are not
touched), taken from a parametrization-free copy of the layer.  A layer with another
tensor parametrized (its bias) stays float, with a reason.
"""
from __future__ import annotations

import copy
from typing import List, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["parametrized_base", "parametrized_reason", "plain_float_layer", "raw_weight"]


def parametrized_base(module: nn.Module) -> Optional[type]:
    """The float class under a module whose only parametrized tensor is ``weight``, else None."""
    if not parametrize.is_parametrized(module) or set(module.parametrizations.keys()) != {"weight"}:
        return None
    return type(module).__bases__[0]


def parametrized_reason(module: nn.Module) -> Optional[str]:
    """Why a parametrized module stays float (None when it isn't parametrized)."""
    if not parametrize.is_parametrized(module):
        return None
    names = ", ".join(sorted(module.parametrizations.keys()))
    base = type(module).__bases__[0].__name__
    return (f"{base} with {names} parametrized (torch.nn.utils.parametrize): only a Linear, Conv1d, Conv2d or "
            f"Embedding whose weight alone is parametrized is quantized; kept float "
            f"(torch.nn.utils.parametrize.remove_parametrizations on a copy of the model makes it a plain {base})")


def raw_weight(module: nn.Module) -> torch.Tensor:
    """The largest tensor a parametrized weight is computed from (for dtype / device / size
    checks without computing it), or ``module.weight`` for any other module."""
    if not parametrize.is_parametrized(module, "weight"):
        return module.weight
    plist = module.parametrizations.weight
    originals: List[torch.Tensor] = [t for n, t in plist.named_parameters(recurse=False) if n.startswith("original")]
    originals += [t for n, t in plist.named_buffers(recurse=False) if n.startswith("original")]
    return max(originals, key=lambda t: t.numel())


def plain_float_layer(module: nn.Module) -> Optional[nn.Module]:
    """A copy of a parametrized layer (see :func:`parametrized_base`) as its plain float class,
    holding the weight the float layer computes in eval mode; None for any other module."""
    if parametrized_base(module) is None:
        return None
    plain = copy.deepcopy(module)
    parametrizations = plain.parametrizations.weight
    parametrizations.eval()  # eval semantics (the layer's own training flag is kept)
    with torch.no_grad():
        weight = parametrizations()
    # not parametrize.remove_parametrizations: it deletes the property from the class, which the
    # copy shares with the caller's module
    plain.__class__ = type(module).__bases__[0]
    del plain._modules["parametrizations"]
    plain.weight = nn.Parameter(weight, requires_grad=False)
    return plain
