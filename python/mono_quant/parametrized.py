"""Layers whose weight is a ``torch.nn.utils.parametrize`` parametrization
(``parametrizations.weight_norm`` / ``spectral_norm`` / ``orthogonal``, or the user's own).

Such a module is an instance of a class torch makes on the fly
(``ParametrizedLinear``, a subclass of ``nn.Linear``) whose ``weight`` is computed
from ``parametrizations.weight.original*`` at each access.  quantize() replaces it
like the plain layer, with the weight the float model computes in eval mode
(spectral_norm's power iteration never runs: the caller's ``u`` / ``v`` are not
touched), taken from a parametrization-free copy of the layer.  A layer with another
tensor parametrized (its bias) stays float, with a reason.

The other way round, torch's reparametrizations of an already quantized layer's weight
(``parametrize`` / ``parametrizations.*``, ``weight_norm``, ``spectral_norm``, ``prune``)
are refused by :func:`refuse_reparametrizing` (the hook-based ``spectral_norm`` through
:class:`GuardedParameters`): they would take the dequantized view for the
weight (a Parameter to train, a buffer to replace) and fail obscurely or, for a 16-bit layer,
detach its stored weight.
"""
from __future__ import annotations

import copy
import os
import sys
from typing import List, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["GuardedParameters", "REPARAMETRIZER_FILES", "parametrized_base", "parametrized_reason", "plain_float_layer",
           "raw_weight", "refuse_reparametrizing", "refuse_weight_parametrization"]


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


# torch's files whose code reads a layer's weight only to reparametrize it
_REPARAMETRIZERS = {os.path.join("torch", "nn", "utils", f"{name}.py"): label for name, label in (
    ("parametrize", "torch.nn.utils.parametrize (parametrizations.weight_norm / spectral_norm / orthogonal)"),
    ("parametrizations", "torch.nn.utils.parametrizations"), ("weight_norm", "torch.nn.utils.weight_norm"),
    ("spectral_norm", "torch.nn.utils.spectral_norm"), ("prune", "torch.nn.utils.prune"))}
REPARAMETRIZER_FILES = tuple(_REPARAMETRIZERS)


def refuse_reparametrizing(module: nn.Module, reader: str) -> None:
    """NotImplementedError when ``reader``, the file of the code reading ``module.weight``, is one
    of torch's reparametrizations (:data:`REPARAMETRIZER_FILES`)."""
    if reader.endswith(REPARAMETRIZER_FILES):
        raise _refusal(module, next(v for k, v in _REPARAMETRIZERS.items() if reader.endswith(k)))


def refuse_weight_parametrization(module: nn.Module) -> None:
    """NotImplementedError when ``parametrize.register_parametrization(module, "weight", ...)`` asks
    whether ``module`` is parametrized (its ``parametrizations`` lookup, two frames up): an
    integer-format layer has no ``weight`` tensor, and torch would say only that."""
    frame = sys._getframe(2)
    caller = frame.f_back
    if (frame.f_code.co_filename.endswith(REPARAMETRIZER_FILES) and caller is not None
            and caller.f_code.co_name == "register_parametrization" and caller.f_locals.get("tensor_name") == "weight"):
        raise _refusal(module, _REPARAMETRIZERS[os.path.join("torch", "nn", "utils", "parametrize.py")])


class GuardedParameters(dict):
    """A quantized layer's ``_parameters``: nn.Module's dict, whose missing ``"weight"`` looked up
    by ``torch.nn.utils.spectral_norm`` (it reads ``module._parameters["weight"]`` straight, past
    ``.weight``) is refused as the other reparametrizations are, before it changes anything (was
    torch's bare ``KeyError: 'weight'``).  ``__missing__`` runs only for absent keys: lookups of
    present ones cost what a dict's do."""

    __slots__ = ()

    def __missing__(self, key):
        if key == "weight":
            frame = sys._getframe(1)
            module = frame.f_locals.get("module")
            if isinstance(module, nn.Module):
                refuse_reparametrizing(module, frame.f_code.co_filename)
        raise KeyError(key)


def _refusal(module: nn.Module, label: str) -> NotImplementedError:
    return NotImplementedError(
        f"{label} on the weight of {type(module).__name__} ({getattr(module, 'weight_format', '?')}): a quantized "
        f"layer's weight is its stored format (integer codes and scales, or a 16-bit buffer) behind a read-only "
        f".weight view, not a Parameter to reparametrize or prune.  Apply it to the float model and quantize "
        f"that (quantize() takes a layer whose weight is parametrized with the weight it computes; prune.remove() "
        f"first makes pruning permanent); its bias, a float Parameter, may still be pruned")
