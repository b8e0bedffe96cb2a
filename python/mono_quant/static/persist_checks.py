"""Load-time checks of a static int8 layer's numbers (called by persist.py, which reads the
file): its packed weight's geometry against the widths its init_kwargs give, its activation
scales against what calibration writes, and (over the whole program) an output scale that would
make every output the zero-point.  Each problem is a CheckpointError naming the layer."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..errors import CheckpointError
from ..formats.checks import MAX_SCALE, MIN_SCALE
from .modules import StaticAdd, StaticConv2d, StaticGlobalAvgPool, StaticLinear
from .modules_eltwise import StaticCat

__all__ = ["check_weight_geometry", "check_activation_scales", "check_outputs_not_constant", "NO_RANGE_SCALE"]


def _width_names(m: nn.Module) -> Tuple[str, str]:
    """How the layer's init_kwargs name its output and reduction widths."""
    if isinstance(m, StaticConv2d):
        return "out_channels", "in_channels / groups x kernel_size"
    return "out_features", "in_features"


def check_weight_geometry(where: str, m: nn.Module, info_tensor: torch.Tensor, n: int, k: int, groups: int) -> None:
    """The packed weight's recorded [version, outputs, inputs, -128 flag, groups] against the
    layer's init_kwargs, naming both widths where they disagree."""
    if info_tensor.dtype != torch.int32 or tuple(info_tensor.shape) != (5,):
        raise CheckpointError(f"{where} weight_packed_info: expected int32[5], got "
                              f"{str(info_tensor.dtype).replace('torch.', '')}{list(info_tensor.shape)}")
    info = [int(v) for v in info_tensor]
    out_name, in_name = _width_names(m)
    if info[1] != n:
        raise CheckpointError(f"{where}: {out_name} is {n} in its init_kwargs but its weight has {info[1]} outputs "
                              f"(weight_packed_info {info})")
    if info[2] != k:
        raise CheckpointError(f"{where}: {in_name} is {k} in its init_kwargs but its weight has {info[2]} inputs "
                              f"(weight_packed_info {info})")
    if info[4] != groups:
        raise CheckpointError(f"{where}: groups is {groups} in its init_kwargs but its weight has {info[4]} "
                              f"(weight_packed_info {info})")


#: the activation scales a static layer may hold
_ACTIVATION_SCALES = ("in_scale", "b_scale", "out_scale")


def check_activation_scales(name: str, m: nn.Module) -> None:
    """Every activation scale of a static layer in MIN_SCALE..MAX_SCALE (what calibration writes:
    mq_choose_qparams): a subnormal one overflows its inverse (every code saturated, 0 x inf NaN),
    a huge one rounds every value to the zero-point."""
    scales = [(a, getattr(m, a, None)) for a in _ACTIVATION_SCALES]
    scales += [(f"in_scales[{i}]", s) for i, s in enumerate(getattr(m, "in_scales", None) or ())]
    for attr, value in scales:
        if value is not None and not MIN_SCALE <= value <= MAX_SCALE:
            raise CheckpointError(f"layer {name!r}: {attr} {value!r} is outside {MIN_SCALE:.4g}..{MAX_SCALE:.4g} "
                                  f"(calibration never writes such a scale: a damaged or edited file)")


#: the output scale calibration writes for an output it saw only zeros in (mq_choose_qparams, convert.qparams)
NO_RANGE_SCALE = 1.0


def _span(scale, zp) -> float:
    """The largest |value| int8 codes -127..127 stand for at (scale, zero-point)."""
    return float(scale) * (127 + abs(int(zp)))


def _reach(m: nn.Module) -> Optional[float]:
    """An upper bound on |output| of a static layer before requantizing (None: not bounded here).
    Input codes are -127..127 around their zero-point, weight codes at most 128 in magnitude."""
    if isinstance(m, (StaticConv2d, StaticLinear)):
        k = (m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] if isinstance(m, StaticConv2d)
             else m.in_features)
        largest = _span(m.in_scale, m.in_zp) * float(m.weight_scale.double().max()) * 128 * k
        reach = largest + (float(m.bias.double().abs().max()) if m.bias is not None else 0.0)
    elif isinstance(m, StaticAdd):
        reach = _span(m.in_scale, m.in_zp) + _span(m.b_scale, m.b_zp)
    elif isinstance(m, StaticGlobalAvgPool):
        reach = _span(m.in_scale, m.in_zp)
    else:
        return None
    return min(reach, 6.0) if getattr(m, "act", None) == "relu6" else reach


def check_outputs_not_constant(program: List[tuple], layers: Dict[str, nn.Module]) -> None:
    """Refuse an int8 output scale so large against what the op can reach that every output
    rounds to the zero-point: the model would answer one constant, whatever its input.

    Two scales quantize writes are let through.  A concatenation shares its output scale with the
    producers whose codes it copies (convert.shared_qparams): a branch far smaller than its
    siblings rounds to the zero-point everywhere, as quantize made it, so such a producer is
    judged with the concatenation, whose reach is its largest input's (a copied one: what its
    producer reaches).  And NO_RANGE_SCALE: calibration saw only zeros there (a dead ReLU)."""
    reach: Dict[str, float] = {}
    copied_by: Dict[str, str] = {}  # producer -> a concatenation that copies its codes
    for name, kind, inputs, _ in program:
        m = layers.get(name) if kind == "module" else None
        if m is None or getattr(m, "out_scale", None) is None:
            continue
        if isinstance(m, StaticCat):
            parts = []
            for src, scale, zp in zip(inputs, m.in_scales, m.in_zps):
                # (the producer's own scale too: this check runs before the int8 flow's)
                copied = src in reach and (scale, zp) == (m.out_scale, m.out_zp) == \
                    (layers[src].out_scale, layers[src].out_zp)
                parts.append(reach[src] if copied else _span(scale, zp))
                if copied:
                    copied_by[src] = name
            reach[name] = max(parts)
        else:
            bound = _reach(m)
            if bound is not None:
                reach[name] = bound
    for name, bound in reach.items():
        m = layers[name]
        if name in copied_by or m.out_scale == NO_RANGE_SCALE or bound >= 0.5 * m.out_scale:
            continue
        shared = sorted(p for p, c in copied_by.items() if c == name)
        inputs = f", with the inputs that share its scale {shared}" if shared else ""
        raise CheckpointError(f"layer {name!r}: out_scale {m.out_scale:.4g} is over twice the largest output the layer "
                              f"can reach ({bound:.4g}{inputs}): every output would be the zero-point {m.out_zp}, "
                              f"whatever the input (a damaged or edited scale)")
