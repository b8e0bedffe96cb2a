"""A static int8 file's layers against the float model passed as ``model=`` to ``mq.load``.

A static file holds its whole graph, so it loads without a model; but a model given is a claim
that the file was saved from it.  Without this check an edited or mistaken file (another
stride, padding or dilation of a conv, an unrelated architecture) loaded "into" the model and
then computed another function than the model describes, silently.  Each layer of the file
that stands for a module of the model (an int8 conv / Conv1d / Linear, a float pool or activation
module, a float module with parameters) is looked up by the name the static capture gave it
(torch.fx's node name of the module's qualified name) and compared: its class, weight shape,
geometry and bias (a bias the model has must be in the file; the file may have one the model
lacks: a BatchNorm folded in)."""
from __future__ import annotations

import re
from typing import Dict, Mapping, Optional

import torch.fx as fx
from torch import nn

from ..errors import CheckpointError
from ..io.layer_geometry import plain_value
from .conv1d import StaticConv1d
from .conv_padding import padded_sides
from .modules import StaticConv2d, StaticLinear
from .persist_float import FLOAT_MODULES, float_module_kwargs
from .persist_float_weighted import WEIGHTED_FLOAT_MODULES, weighted_module_kwargs

__all__ = ["STATIC_GEOMETRY", "geometry_problem", "check_static_layers_against_model"]

_CALL_SUFFIX = re.compile(r"_\d+$")  # fx's suffix for a second call of the same module


def _fx_names(model: nn.Module) -> Dict[str, Optional[nn.Module]]:
    """fx's node name for a call of each submodule -> the module (None where two qualified names
    give the same node name: ambiguous, not checked)."""
    names: Dict[str, Optional[nn.Module]] = {}
    for qualified, module in model.named_modules():
        if not qualified:
            continue
        node = fx.Graph().create_node("call_module", qualified)  # a graph of its own: no suffix
        names[node.name] = None if node.name in names and names[node.name] is not module else module
    return names


#: a static layer's float class and the attributes that must agree with the model's (both loaders)
_CONV_GEOMETRY = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
STATIC_GEOMETRY = {
    "StaticConv2d": (nn.Conv2d, _CONV_GEOMETRY),
    "StaticConv1d": (nn.Conv1d, _CONV_GEOMETRY),  # (its 1-D geometry: StaticConv1d.float_geometry)
    "StaticLinear": (nn.Linear, ("in_features", "out_features")),
}


def geometry_problem(layer: nn.Module, module: nn.Module) -> Optional[str]:
    """The first way the file's int8 ``layer`` computes otherwise than the model's float ``module``
    of its class (None: the same): an attribute of STATIC_GEOMETRY, its padding (per side, and the
    mode), a bias the model has and the file not (the file may have one the model lacks: a
    BatchNorm folded in)."""
    conv = isinstance(module, (nn.Conv1d, nn.Conv2d))
    if conv:  # ('same' / 'valid' as numbers per side, and the mode; a Conv1d's: its length's)
        want = padded_sides(module)
        mode, sides = layer.padded_sides()
        got = (mode, sides[2:]) if isinstance(layer, StaticConv1d) else (mode, sides)
        if got != want:
            return f"padding {got[1]} ({got[0]}) in the file, {want[1]} ({want[0]}) in the model"
    one_d = layer.float_geometry() if isinstance(layer, StaticConv1d) else {}
    for attr in STATIC_GEOMETRY[type(layer).__name__][1]:
        if conv and attr == "padding":
            continue
        got, want = plain_value(one_d.get(attr, getattr(layer, attr))), plain_value(getattr(module, attr))
        if got != want:
            return f"{attr} {got} in the file, {want} in the model"
    if getattr(module, "bias", None) is not None and layer.bias is None:
        return "the model's layer has a bias, the file's has none"
    return None


def _layer_problem(name: str, layer: nn.Module, module: Optional[nn.Module]) -> Optional[str]:
    """How the file's ``layer`` differs from the model's ``module`` (None: it doesn't, or ambiguous)."""
    if module is None:
        return None
    if isinstance(layer, (StaticConv2d, StaticLinear)):
        float_cls = STATIC_GEOMETRY[type(layer).__name__][0]
        if not isinstance(module, float_cls):
            return f"the file has an int8 {float_cls.__name__} there, the model a {type(module).__name__}"
        return geometry_problem(layer, module)
    if type(module) is not type(layer):
        return f"the file has a {type(layer).__name__} there, the model a {type(module).__name__}"
    arguments = float_module_kwargs if type(layer) in FLOAT_MODULES else weighted_module_kwargs
    try:
        want = {a: plain_value(v) for a, v in arguments(name, module).items()}
    except ValueError:  # the model's module is one a static file cannot hold: it differs
        want = None
    got = {a: plain_value(v) for a, v in arguments(name, layer).items()}
    return None if want == got else f"arguments {got} in the file, {want} in the model"


def check_static_layers_against_model(layers: Mapping[str, nn.Module], model: nn.Module) -> None:
    """CheckpointError naming the first layer of the file that is not the model's module of that
    name, or differs from it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model= must be the torch.nn.Module the file was saved from, got {type(model).__name__}")
    by_name = _fx_names(model)
    for name, layer in layers.items():
        if not isinstance(layer, (StaticConv2d, StaticLinear)) and type(layer) not in FLOAT_MODULES \
                and type(layer) not in WEIGHTED_FLOAT_MODULES:
            continue  # adds, concatenations, fused functions: no module of the model stands behind them
        # the module of that name, or one whose name differs only in fx's numeric suffix: a second
        # call of module "c" is node "c_1", and then module "c_1"'s call is node "c_2"
        base = _CALL_SUFFIX.sub("", name)
        keys = [k for k in dict.fromkeys([name, *by_name])
                if k in by_name and (k == name or _CALL_SUFFIX.sub("", k) == base)]
        if not keys:
            raise CheckpointError(f"layer {name!r} of the file is no module of the model passed as model= (the file "
                                  f"was saved from another architecture): pass the model it was saved from, or none "
                                  f"(a static file holds its whole graph)")
        problems = [_layer_problem(name, layer, by_name[k]) for k in keys]
        if all(problems):
            raise CheckpointError(f"layer {name!r}: {problems[0]} (the file was not saved from this model; pass the "
                                  f"model it was saved from, or none: a static file holds its whole graph)")
