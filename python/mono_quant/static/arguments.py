"""The forward arguments of a captured static model: how each input op is bound, and which
optional arguments calibration never passes.

torch.fx traces every argument as a tensor proxy, so ``if mask is not None:`` is taken as true:
a graph traced with ``mask`` cannot run without it.  An argument with a default of None that the
calibration data never passes is traced as None instead (``fixed``: the graph holds the float
model's path for mask=None; another value is refused); one it passes is required.
"""
from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["InputSpec", "BINDINGS", "bind_inputs", "untraced_optionals"]


#: how an input op is bound when its argument is not passed
BINDINGS = ("required", "default", "fixed", "given")


@dataclass(frozen=True)
class InputSpec:
    """An input op's argument, by position, else by ``argument`` name, else by ``binding``:
    "required" (no default), "default" (``default`` is used), "fixed" (the graph was captured for
    ``default``, None: no other value is taken) or "given" (the float model's default is None, but
    calibration passed it: the graph was captured with it given, it is required)."""
    argument: str
    binding: str = "required"
    default: Any = None

    def __post_init__(self):
        if self.binding not in BINDINGS:
            raise ValueError(f"binding must be one of {BINDINGS}, got {self.binding!r}")


def bind_inputs(program: List[tuple], args: tuple, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """input op name -> value, as Python binds ``forward(*args, **kwargs)`` (a TypeError as it
    raises one; an entry without an InputSpec is a required argument of the op's name)."""
    env: Dict[str, Any] = {}
    arguments = []
    for name, kind, _, spec in program:
        if kind != "input":
            continue
        argument = spec.argument if spec is not None else name
        arguments.append(argument)
        if len(arguments) <= len(args):
            if argument in kwargs:
                raise TypeError(f"static int8 model: got multiple values for argument {argument!r}")
            value = args[len(arguments) - 1]
        elif argument in kwargs:
            value = kwargs[argument]
        elif spec is not None and spec.binding in ("default", "fixed"):
            value = spec.default
        else:
            raise TypeError(f"static int8 model: missing argument {argument!r}" + (
                f" (calibration passed it, so the graph was captured with it given: torch.fx takes `if {argument} "
                "is not None` as true)" if spec is not None and spec.binding == "given" else ""))
        if spec is not None and spec.binding == "fixed" and value is not spec.default:
            raise TypeError(f"static int8 model: argument {argument!r} must be {spec.default!r}: calibration never "
                            f"passed it, so the graph was captured for {argument}={spec.default!r} (torch.fx follows "
                            f"one side of an `if {argument} is None`); quantize with calibration batches that pass "
                            "it (dicts) to use it")
        env[name] = value
    if len(args) > len(arguments):
        raise TypeError(f"static int8 model: takes {len(arguments)} arguments, got {len(args)}")
    unknown = [k for k in kwargs if k not in arguments]
    if unknown:
        raise TypeError(f"static int8 model: unexpected keyword argument {unknown[0]!r} (it takes {arguments})")
    return env


def untraced_optionals(model: nn.Module, calibration) -> Tuple[List[str], Any]:
    """(forward's arguments with a default of None that the first calibration batch does not pass,
    the calibration data to feed: the same batches).  Calibration runs ``model(x)`` for a tensor or
    an (x, y) tuple and ``model(**batch)`` for a dict; a callable runs the model itself (unknown:
    none listed)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return [], calibration
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) for p in params):
        return [], calibration  # (fx binds these its own way)
    optional = [p.name for p in params if p.default is None]
    if not optional:
        return [], calibration  # (the data is not touched)
    first, calibration = _first_batch(calibration)
    if isinstance(first, dict):
        given = set(first)
    elif isinstance(first, (torch.Tensor, list, tuple)):
        given = {params[0].name}
    else:
        return [], calibration
    return [n for n in optional if n not in given], calibration


def _first_batch(data) -> Tuple[Optional[Any], Any]:
    """(the first calibration batch or None, the data with that batch still in it)."""
    if isinstance(data, (torch.Tensor, dict)):
        return data, data
    if isinstance(data, (str, bytes)) or (callable(data) and not hasattr(data, "__iter__")):
        return None, data
    try:
        it = iter(data)
    except TypeError:
        return None, data  # (feeding it raises the Calibrator's own error)
    first = next(it, None)
    return first, (data if isinstance(data, (list, tuple)) else itertools.chain([] if first is None else [first], it))
