"""load(path, model=skeleton) of the layers that hold several weight matrices
(QuantizedLSTM, QuantizedGRU, QuantizedMultiheadAttention).

A saved composite is its children, recorded as ordinary layers (``lstm.ih_l0``...). The
skeleton has the float module there (an nn.LSTM), which has no such submodules: each
float composite with file layers under it is replaced, in the map of the skeleton's
modules, by a *shell* (the quantized class with the float module's configuration and a
meta nn.Linear placeholder per child), so its children are found and rebuilt as any
layer; :func:`finish_shells` then puts them in the shell.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping

from torch import nn

from ..modules.composite import is_composite
from ..modules.registry import qmodule_for

__all__ = ["expand_shells", "finish_shells"]


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
                  problems: List[str]) -> None:
    """Put each shell, its placeholders replaced by the loaded children (in ``memo``), in
    ``memo`` in place of its float module; a child the file lacks is a problem."""
    built: Dict[int, nn.Module] = {}
    for path, (module, shell) in shells.items():
        missing = [c for c, m in shell._modules.items() if id(m) not in memo]
        if missing:
            problems.append(f"quantized {type(shell).__name__} {path or '<root>'!r} has no layer "
                            f"{(path + '.' if path else '') + missing[0]!r} in the checkpoint")
            continue
        if id(module) not in built:
            built[id(module)] = copy.deepcopy(shell, memo)  # the placeholders become the loaded children
            built[id(module)].train(module.training)
        memo[id(module)] = built[id(module)]
        replaced_paths.append(path)
