"""From a calibrated fusion plan to a StaticGraphModel of int8 modules.

Which values stay int8 between ops: a fused op's output is int8 when every
consumer takes int8 at that input (a conv from a 4-D producer, a linear from
a 2-D one, a Conv1d from a Conv1d (its int8 codes are the height-1 NHWC image, rank 3 here:
nothing else reads them), a global pool from a 4-D one, an add whose two inputs are both
int8 of one rank, a concatenation of int8 inputs of one rank) and it is not
a model output; otherwise it is float and the consumer quantizes it with its
own calibrated input scale.  Adds, concatenations and global pools run in
int8 only on int8 inputs (else in float).  Decided by iterating to a fixed
point: an add that loses an int8 input makes its other producer float too.

A concatenation shares its output scale with its inputs (as torch.ao's shared
observers): each int8 producer feeding it outputs at the concatenation's
calibrated (scale, zero-point), so its codes are copied as they are; a
producer already claimed by a later concatenation keeps that one's qparams
and is requantized inside this one (modules_eltwise.StaticCat).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from torch import nn

from ..calibration import ActivationRange
from .capture import FusionPlan, PlanOp
from .graph import FusedAddFloat, FusedGapFloat, StaticGraphModel, float_op_entry
from .modules import StaticAdd, StaticConv2d, StaticGlobalAvgPool, StaticLinear
from .conv1d import StaticConv1d
from .modules_eltwise import StaticBroadcastAdd, StaticCat, nhwc_dim
from .program import StaticInt8Model

__all__ = ["convert_plan", "LAYER_CLASSES", "QUANT_KINDS", "int8_values", "shared_qparams", "input_point", "qparams",
           "NONNEGATIVE_ZERO_POINT"]

#: the plan's ops static int8 computes in int8
QUANT_KINDS = ("conv", "conv1d", "linear", "add", "cat", "gap")
#: the layer ops: int8 or float in, int8 or float out, the static module they become
LAYER_CLASSES = {"conv": StaticConv2d, "conv1d": StaticConv1d, "linear": StaticLinear}
#: the rank of the int8 values a layer op reads and writes (a Conv1d's: its own, see the module docstring)
_LAYER_RANK = {"conv": 4, "conv1d": 3, "linear": 2}


def _rank(op: PlanOp, plan: FusionPlan, ranks: Dict[str, int]) -> int:
    if op.kind in _LAYER_RANK:
        return _LAYER_RANK[op.kind]
    if op.kind == "gap":
        return 2 if op.flatten else 4
    if op.kind in ("add", "cat"):
        return ranks.get(op.inputs[0], 0)
    return 0


def _runs_int8(op: PlanOp, int8: Dict[str, bool], ranks: Dict[str, int]) -> bool:
    """Whether an add / cat / gap can run on its inputs as int8 (all int8, one rank it supports)."""
    if not all(int8[i] for i in op.inputs):
        return False
    rs = {ranks[i] for i in op.inputs}
    if op.kind == "gap":
        return rs == {4}
    if op.kind == "cat":  # int8 layout: channels-last when rank 4 (conv-like), else the float one
        seen = op.seen_rank
        return len(rs) == 1 and seen is not None and ((rs == {4} and seen == 4) or (rs == {2} and seen >= 1))
    if op.kind == "add":
        if len(rs) != 1 or not rs <= {2, 4}:  # (a Conv1d's codes: no int8 add reads them)
            return False
        return op.const is None or op.const.dim() <= next(iter(rs))
    return True


def int8_values(plan: FusionPlan) -> Dict[str, bool]:
    """op name -> whether its output is passed on as int8."""
    consumers = plan.consumers()
    ops = {o.name: o for o in plan.ops}
    ranks: Dict[str, int] = {}
    for o in plan.ops:
        ranks[o.name] = _rank(o, plan, ranks)
    int8 = {o.name: o.kind in QUANT_KINDS and bool(consumers[o.name]) for o in plan.ops}
    changed = True
    while changed:
        changed = False
        for o in plan.ops:
            if not int8[o.name]:
                continue
            ok = o.kind in LAYER_CLASSES or _runs_int8(o, int8, ranks)  # else: runs in float, float output
            for c, _pos in consumers[o.name]:
                cop = ops[c]
                if _LAYER_RANK.get(cop.kind) == ranks[o.name]:
                    continue
                if cop.kind in ("gap", "add", "cat") and _runs_int8(cop, int8, ranks):
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


def shared_qparams(plan: FusionPlan, int8: Dict[str, bool], own: Dict[str, Tuple[float, int]]
                   ) -> Dict[str, Tuple[float, int]]:
    """Output (scale, zero-point) of every int8 op once concatenations share theirs: from the last
    concatenation back, each hands its qparams to the int8 producers feeding it that no later
    concatenation claimed (an inner concatenation passes them on to its own inputs)."""
    out = dict(own)
    claimed = set()
    for op in reversed(plan.ops):
        if op.kind != "cat" or not int8.get(op.name):
            continue
        for src in dict.fromkeys(op.inputs):
            if int8.get(src) and src not in claimed:
                out[src] = out[op.name]
                claimed.add(src)
    return out


def convert_plan(plan: FusionPlan, ranges: Dict[str, ActivationRange], aliases: Dict[str, str],
                 nonnegative: Optional[Dict[str, bool]] = None, broadcast_adds: Iterable[str] = ()
                 ) -> Tuple[StaticGraphModel, Dict[str, bool], List[Tuple[str, str]]]:
    """(static model, int8-output map, [(op, why it runs in float)]).  ``nonnegative``: point ->
    whether calibration saw no negative value there (those get zero-point -127);
    ``broadcast_adds``: adds whose operands broadcast in calibration (StaticBroadcastAdd)."""
    nonnegative = nonnegative or {}
    broadcast_adds = set(broadcast_adds)
    int8 = int8_values(plan)
    ranks: Dict[str, int] = {}
    for o in plan.ops:
        ranks[o.name] = _rank(o, plan, ranks)
    layers: Dict[str, nn.Module] = {}
    program = []
    in_float: List[Tuple[str, str]] = []

    def qparams_of(point: str) -> Tuple[float, int]:
        r = ranges.get(point)
        if r is None:
            raise RuntimeError(f"no calibration statistics for {point!r}: the calibration data never reached it")
        return qparams(r, nonnegative.get(point, False))

    out_q = shared_qparams(plan, int8, {o.name: qparams_of(f"{o.name}.output") for o in plan.ops if int8[o.name]})
    for op in plan.ops:
        out_scale, out_zp = out_q[op.name] if int8.get(op.name) else (None, 0)
        if op.kind in LAYER_CLASSES:
            src = op.inputs[0]
            int8_in = int8[src]
            in_scale, in_zp = out_q[src] if int8_in else qparams_of(input_point(op, 0, aliases))
            layers[op.name] = LAYER_CLASSES[op.kind].from_float(op.module, op.act, in_scale, out_scale, int8_in, in_zp,
                                                                out_zp)
        elif op.kind == "add":
            if all(int8[i] for i in op.inputs):
                (a, za) = out_q[op.inputs[0]]
                if op.const is not None:
                    layers[op.name] = StaticBroadcastAdd.with_constant(op.const, ranks[op.inputs[0]], op.act, a,
                                                                       out_scale, za, out_zp)
                else:
                    (b, zb) = out_q[op.inputs[1]]
                    cls = StaticBroadcastAdd if op.name in broadcast_adds else StaticAdd
                    layers[op.name] = cls(op.act, a, b, out_scale, za, zb, out_zp)
            else:
                layers[op.name] = FusedAddFloat(op.act, op.const)
                in_float.append((op.name, "add of a float input (its producer has no int8 output)"))
        elif op.kind == "cat":
            if _runs_int8(op, int8, ranks):
                q = [out_q[i] for i in op.inputs]
                channels_last = ranks[op.inputs[0]] == 4
                dim = nhwc_dim(op.dim, 4) if channels_last else op.dim % op.seen_rank
                layers[op.name] = StaticCat([s for s, _ in q], [z for _, z in q], out_scale, out_zp, dim,
                                            op.seen_rank, channels_last)
            else:
                program.append(float_op_entry(op, layers))
                in_float.append((op.name, "concatenation of a float input, of inputs of different layouts, or "
                                          "not reached in calibration"))
                continue
        elif op.kind == "gap":
            src = op.inputs[0]
            if int8[src]:
                in_scale, in_zp = out_q[src]
                layers[op.name] = StaticGlobalAvgPool(in_scale, out_scale, op.flatten, None, in_zp, out_zp)
            else:
                layers[op.name] = FusedGapFloat(op.flatten)
                in_float.append((op.name, "global pool of a float input"))
        else:
            program.append(float_op_entry(op, layers))
            continue
        program.append((op.name, "module", list(op.inputs), None))
    return StaticInt8Model(program, layers).eval(), int8, in_float
