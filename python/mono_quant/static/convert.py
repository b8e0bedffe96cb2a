"""From a calibrated fusion plan to a StaticGraphModel of int8 modules.

Which values stay int8 between ops: a fused op's output is int8 when every
consumer takes int8 at that input (a conv from a 4-D producer, a linear from
a 2-D one, a global pool from a 4-D one, an add whose two inputs are both
int8 of one rank) and it is not a model output; otherwise it is float and
the consumer quantizes it with its own calibrated input scale.  Adds and
global pools run in int8 only on int8 inputs (else in float).  Decided by
iterating to a fixed point: an add that loses an int8 input makes its other
producer float too.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
from torch import nn

from ..calibration import ActivationRange
from .capture import FusionPlan, PlanOp
from .graph import FusedAddFloat, FusedGapFloat, StaticGraphModel, float_op_entry
from .modules import StaticAdd, StaticConv2d, StaticGlobalAvgPool, StaticLinear
from .program import StaticInt8Model

__all__ = ["convert_plan", "int8_values", "input_point", "qparams", "NONNEGATIVE_ZERO_POINT"]

_QUANT_KINDS = ("conv", "linear", "add", "gap")


def _rank(op: PlanOp, plan: FusionPlan, ranks: Dict[str, int]) -> int:
    if op.kind == "conv":
        return 4
    if op.kind == "linear":
        return 2
    if op.kind == "gap":
        return 2 if op.flatten else 4
    if op.kind == "add":
        return ranks.get(op.inputs[0], 0)
    return 0


def int8_values(plan: FusionPlan) -> Dict[str, bool]:
    """op name -> whether its output is passed on as int8."""
    consumers = plan.consumers()
    ops = {o.name: o for o in plan.ops}
    ranks: Dict[str, int] = {}
    for o in plan.ops:
        ranks[o.name] = _rank(o, plan, ranks)
    int8 = {o.name: o.kind in _QUANT_KINDS and bool(consumers[o.name]) for o in plan.ops}
    changed = True
    while changed:
        changed = False
        for o in plan.ops:
            if not int8[o.name]:
                continue
            ok = True
            if o.kind in ("add", "gap") and not all(int8[i] for i in o.inputs):
                ok = False  # runs in float: float output
            if o.kind == "add" and ranks[o.inputs[0]] != ranks[o.inputs[1]]:
                ok = False
            for c, _pos in consumers[o.name]:
                cop = ops[c]
                r = ranks[o.name]
                if cop.kind == "conv" and r == 4:
                    continue
                if cop.kind == "linear" and r == 2:
                    continue
                if cop.kind == "gap" and r == 4:
                    continue
                if cop.kind == "add" and all(int8[i] for i in cop.inputs) and \
                        ranks[cop.inputs[0]] == ranks[cop.inputs[1]]:
                    continue
                ok = False
            if not ok:
                int8[o.name] = False
                changed = True
    return int8


def input_point(op: PlanOp, position: int, aliases: Dict[str, str]) -> str:
    """The calibration point holding op's input ``position`` (an alias resolved to the producer's output)."""
    point = f"{op.name}.input" + (str(position) if position else "")
    return aliases.get(point, point)


#: zero-point of an activation that is never negative (ReLU outputs): codes -127..127 cover [0, max]
NONNEGATIVE_ZERO_POINT = -127


def qparams(r: ActivationRange, nonnegative: bool) -> Tuple[float, int]:
    """(scale, zero-point) of an activation in the -127..127 codes: symmetric (zero-point 0,
    scale max|x| / 127), or, for a never-negative one, all 255 levels on [0, max]
    (zero-point -127, scale max / 254: one more bit than a symmetric ReLU output)."""
    if not nonnegative:
        return r.scale, 0
    top = np.float32(max(r.hi, 0.0))
    return (float(top / np.float32(254.0)) if top > 0 else 1.0), NONNEGATIVE_ZERO_POINT


def convert_plan(plan: FusionPlan, ranges: Dict[str, ActivationRange], aliases: Dict[str, str],
                 nonnegative: Optional[Dict[str, bool]] = None
                 ) -> Tuple[StaticGraphModel, Dict[str, bool], List[Tuple[str, str]]]:
    """(static model, int8-output map, [(op, why it runs in float)]).  ``nonnegative``: point ->
    whether calibration saw no negative value there (those get zero-point -127)."""
    nonnegative = nonnegative or {}
    int8 = int8_values(plan)
    layers: Dict[str, nn.Module] = {}
    program = []
    in_float: List[Tuple[str, str]] = []

    def qparams_of(point: str) -> Tuple[float, int]:
        r = ranges.get(point)
        if r is None:
            raise RuntimeError(f"no calibration statistics for {point!r}: the calibration data never reached it")
        return qparams(r, nonnegative.get(point, False))

    for op in plan.ops:
        out_scale, out_zp = qparams_of(f"{op.name}.output") if int8.get(op.name) else (None, 0)
        if op.kind in ("conv", "linear"):
            src = op.inputs[0]
            int8_in = int8[src]
            in_scale, in_zp = qparams_of(f"{src}.output") if int8_in else qparams_of(input_point(op, 0, aliases))
            cls = StaticConv2d if op.kind == "conv" else StaticLinear
            layers[op.name] = cls.from_float(op.module, op.act, in_scale, out_scale, int8_in, in_zp, out_zp)
        elif op.kind == "add":
            if all(int8[i] for i in op.inputs):
                (a, za), (b, zb) = (qparams_of(f"{i}.output") for i in op.inputs)
                layers[op.name] = StaticAdd(op.act, a, b, out_scale, za, zb, out_zp)
            else:
                layers[op.name] = FusedAddFloat(op.act)
                in_float.append((op.name, "add of a float input (its producer has no int8 output)"))
        elif op.kind == "gap":
            src = op.inputs[0]
            if int8[src]:
                in_scale, in_zp = qparams_of(f"{src}.output")
                layers[op.name] = StaticGlobalAvgPool(in_scale, out_scale, op.flatten, None, in_zp, out_zp)
            else:
                layers[op.name] = FusedGapFloat(op.flatten)
                in_float.append((op.name, "global pool of a float input"))
        else:
            program.append(float_op_entry(op, layers))
            continue
        program.append((op.name, "module", list(op.inputs), None))
    return StaticInt8Model(program, layers).eval(), int8, in_float
