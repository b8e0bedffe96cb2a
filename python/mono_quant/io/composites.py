"""load(path, model=skeleton) of the layers that hold several weight matrices
(QuantizedLSTM, QuantizedGRU, QuantizedMultiheadAttention).

A saved composite is its children, recorded as ordinary layers (``lstm.ih_l0``...). The
skeleton has the float module there (an nn.LSTM), which has no such submodules: each
float composite with file layers under it is replaced, in the map of the skeleton's
modules, by a *shell* (the quantized class with the float module's configuration and a
meta nn.Linear placeholder per child), so its children are found and rebuilt as any
layer; :func:`finish_shells` then puts them in the shell.  A composite's float parameters
(an attention's ``bias_k`` / ``bias_v``) are the file's tensors under the float names
(``attn.bias_k``), checked and put in the shell by :func:`load_float_parameters`.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Set

import torch
from torch import nn

from .errors import CheckpointError
from ..modules.composite import QuantizedComposite, is_composite
from ..modules.registry import qmodule_for

__all__ = ["expand_shells", "finish_shells", "load_float_parameters", "float_parameter_keys",
           "check_loaded_float_parameters"]


def expand_shells(modules: Dict[str, nn.Module], layers: List[Mapping[str, Any]]) -> Dict[str, tuple]:
    """Add the shells' placeholder children to ``modules`` (path -> module) for each float
    composite of the skeleton that the file has layers under; returns ``{path: (float
    module, shell)}``."""
    names = {n for layer in layers for n in [layer["name"]] + list(layer.get("aliases", []))}
    shells: Dict[str, tuple] = {}
    by_module: Dict[int, nn.Module] = {}
    for path, module in list(modules.items()):
        qcls = qmodule_for(module)
        if not is_composite(qcls):
            continue
        prefix = f"{path}." if path else ""
        child_names = [child for child, _, _ in qcls.child_specs(module)]
        if not any(prefix + child in names for child in child_names):
            continue
        shell = by_module.get(id(module))
        if shell is None:
            shell = by_module[id(module)] = qcls.shell(module)
        shells[path] = (module, shell)
        for child in child_names:
            modules[prefix + child] = shell._modules[child]
    return shells


def finish_shells(shells: Dict[str, tuple], memo: Dict[int, Any], replaced_paths: List[str],
                  problems: List[str], failed: Set[str] = frozenset()) -> None:
    """Put each shell, its placeholders replaced by the loaded children (in ``memo``), in
    ``memo`` in place of its float module; a child the file lacks is a problem (one in
    ``failed``, a layer whose problem is already told, is not told again)."""
    built: Dict[int, nn.Module] = {}
    for path, (module, shell) in shells.items():
        prefix = path + "." if path else ""
        missing = [prefix + c for c, m in shell._modules.items() if id(m) not in memo]
        if missing:
            if not set(missing) & set(failed):
                problems.append(f"quantized {type(shell).__name__} {path or '<root>'!r} has no layer "
                                f"{missing[0]!r} in the checkpoint")
            continue
        if id(module) not in built:
            built[id(module)] = copy.deepcopy(shell, memo)  # the placeholders become the loaded children
            built[id(module)].train(module.training)
        memo[id(module)] = built[id(module)]
        replaced_paths.append(path)


def load_float_parameters(shells: Dict[str, tuple], tensors: Mapping[str, torch.Tensor], memo: Dict[int, Any],
                          consumed: Set[str], problems: List[str]) -> None:
    """Map each shell's float parameter placeholders (in ``memo``) to the file's tensor under
    ``<path>.<name>``, checked as untrusted input (present, floating point, the skeleton's
    shape, finite; the skeleton's dtype unless it is on the meta device), and mark the keys
    ``consumed``; what is wrong is appended to ``problems``."""
    first_key: Dict[int, str] = {}
    for key, (module, shell, name) in _float_parameters_of(shells).items():
        problem = _float_parameter_problem(tensors.get(key), getattr(module, name))
        if problem:
            problems.append(f"{key!r}: {problem}")
            continue
        consumed.add(key)
        placeholder = shell._parameters[name]
        if id(placeholder) not in memo:  # a composite under several names: its first name's tensor
            memo[id(placeholder)] = nn.Parameter(tensors[key], requires_grad=placeholder.requires_grad)
            first_key[id(placeholder)] = key
        elif not torch.equal(tensors[key], memo[id(placeholder)].data):  # one module: one value, not two
            problems.append(f"{key!r}: differs from {first_key[id(placeholder)]!r}, the same module under "
                            f"another name in the model (the file was edited, or saved from another model)")


def float_parameter_keys(shells: Dict[str, tuple]) -> Dict[str, torch.Tensor]:
    """The file keys of the shells' float parameters, each with the skeleton's parameter
    (its shape): what a Hugging Face folder must hold besides the layers' tensors."""
    return {key: getattr(module, name) for key, (module, _, name) in _float_parameters_of(shells).items()}


def check_loaded_float_parameters(model: nn.Module) -> None:
    """Raise CheckpointError naming a float parameter of a quantized composite of ``model``
    (loaded by another loader: transformers) that is not a finite floating tensor."""
    for path, m in model.named_modules():
        if isinstance(m, QuantizedComposite):
            for name, p in m._parameters.items():
                problem = None if p is None else _float_parameter_problem(p.detach(), p)
                if problem:
                    raise CheckpointError(f"{(path + '.' if path else '') + name!r}: {problem}")


def _float_parameters_of(shells: Dict[str, tuple]) -> Dict[str, tuple]:
    """file key -> (skeleton's float module, shell, parameter name) of each shell's float parameters."""
    out = {}
    for path, (module, shell) in shells.items():
        for name, placeholder in shell._parameters.items():
            if placeholder is not None:
                out[f"{path}.{name}" if path else name] = (module, shell, name)
    return out


def _float_parameter_problem(tensor, expected: torch.Tensor):
    if tensor is None:
        return "missing from the checkpoint"
    if not tensor.is_floating_point():
        return f"dtype {tensor.dtype} in the file, expected a floating dtype"
    if tuple(tensor.shape) != tuple(expected.shape):
        return f"shape {list(tensor.shape)} in the file, {list(expected.shape)} in the model"
    if expected.device.type != "meta" and tensor.dtype != expected.dtype:
        return (f"{tensor.dtype} in the file, {expected.dtype} in the model (build the model in the file's dtype, "
                f"or on the meta device)")
    if not bool(torch.isfinite(tensor).all()):
        return "holds NaN or Inf"
    return None
