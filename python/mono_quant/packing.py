"""Packing an int8 weight, once at quantize time, into the layout the int8
matmul kernels stream (docs/formats.md, "Packed INT8 matmul weights").

``pack_int8_linear`` is the single place that makes the packed buffers: the
module path (``QuantizedLinear.from_float`` / ``QuantizedConv2d.from_float``)
and the state_dict path (``quantize_state_dict_entry``) both call it, so they
store identical tensors.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

from . import kernels
from .errors import NonFiniteWeightError
from .kernels.layout import (INT8_K_GROUP, INT8_PANEL_ROWS, PACKED_LAYOUT_VERSION, int8_packed_sizes, round_up,
                             unpack_int8_rows)
from .tensor import QuantizedWeight, error_powers, raise_if_dequantize_overflows

__all__ = ["PACKED_LAYOUT_VERSION", "PACKED_BUFFERS", "pack_int8_linear", "quantize_and_pack_int8",
           "packed_sizes", "unpack_int8_linear", "unpack_int8_rows", "check_packed_int8", "check_packed_module", "check_packed_groups",
           "can_pack", "packed_info"]

# buffer names, beside weight_qdata / weight_scale / weight_zero_point
PACKED_BUFFERS = ("weight_packed", "weight_colsum", "weight_packed_info")


def can_pack(qweight) -> bool:
    """Whether the int8 kernels can take this weight: int8 storage, per output
    channel (axis 0) or per tensor, at least 2-D."""
    return (isinstance(qweight, QuantizedWeight) and qweight.qtype.storage == torch.int8
            and qweight.qtype.bits == 8 and qweight.axis in (0, None)
            and qweight.qdata.dim() >= 2 and qweight.qdata.shape[0] > 0 and qweight.qdata[0].numel() > 0)


def pack_int8_linear(qweight: QuantizedWeight, groups: int = 1) -> Dict[str, torch.Tensor]:
    """The packed buffers of an int8 weight ``[out, in]`` (Linear) or
    ``[out, in/groups, kh, kw]`` (Conv2d, flattened in (kh, kw, in) order).

    Returns ``{"weight_packed": int8 1-D, "weight_colsum": int32 1-D,
    "weight_packed_info": int32 [5]}``, the info being (layout version, out,
    in, has_m128, groups).  With ``groups > 1`` each group's ``out/groups``
    channels are packed on their own, one after the other.  Raises
    ValueError for a weight the kernels cannot take (see :func:`can_pack`).
    """
    if not can_pack(qweight):
        raise ValueError(f"pack_int8_linear needs an int8 per-channel or per-tensor weight, got {qweight!r}")
    # a weight tied between layers is one QuantizedWeight (quantize() converts it once): pack it once too,
    # so the layers share the packed storage as they share weight_qdata
    memo = qweight.packed_memo
    qdata = qweight.qdata  # (inference-mode tensors have no version counter)
    key = (groups, qdata.data_ptr(), -1 if qdata.is_inference() else qdata._version)
    if key not in memo:
        memo.clear()
        memo[key] = _pack(qweight, groups)
    return dict(memo[key])


def _pack(qweight: QuantizedWeight, groups: int) -> Dict[str, torch.Tensor]:
    q = qweight.qdata.detach().to("cpu")
    if q.dim() == 4:  # conv [out, in/groups, kh, kw]: K in (kh, kw, in) order, as the NHWC im2col reads it
        q = q.permute(0, 2, 3, 1)
    q = q.reshape(q.shape[0], -1)
    out_features, in_features = q.shape
    if groups < 1 or out_features % groups:
        raise ValueError(f"out_features {out_features} is not divisible by groups={groups}")
    parts, sums, has_m128 = [], [], False
    for chunk in q.chunk(groups, dim=0) if groups > 1 else (q,):
        packed, w_sum, m128 = kernels.pack_int8(chunk)
        parts.append(packed)
        sums.append(w_sum)
        has_m128 |= m128
    info = torch.tensor([PACKED_LAYOUT_VERSION, out_features, in_features, int(has_m128), groups], dtype=torch.int32)
    buffers = {
        "weight_packed": parts[0] if groups == 1 else torch.cat(parts),
        "weight_colsum": sums[0] if groups == 1 else torch.cat(sums),
        "weight_packed_info": info,
    }
    # packed on the CPU, kept where the weight is: a model quantized on a GPU stays wholly there (its
    # other buffers are there; a packed weight left on the CPU sent its forward to the CPU kernels
    # with scales on the GPU)
    device = qweight.qdata.device
    return buffers if device.type == "cpu" else {k: v.to(device) for k, v in buffers.items()}


def quantize_and_pack_int8(weight: torch.Tensor, qmin: int, qmax: int, symmetric: bool, with_error: bool,
                           out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, block_rows: Optional[int] = None):
    """Per-channel int8 quantization of a 2-D CPU weight straight into the packed layout,
    one panel of INT8_PANEL_ROWS rows at a time (``kernels.quantize_pack_int8``), so the plain int8 copy
    never exists and the weight is read once.  Gives exactly what quantize_weight
    (axis 0) + pack_int8_linear give.  ``out``: a (packed, column sums) pair of int8 /
    int32 tensors of the right sizes to fill instead of allocating (buffer reuse).
    ``block_rows`` is accepted and ignored (the kernel now works panel by panel).

    Returns ``(scale, zero_point, packed_buffers, sum_x2, sum_err2)`` (the sums are 0.0
    unless ``with_error``).  Raises NonFiniteWeightError naming the first bad row.
    """
    rows, cols = weight.shape
    packed, colsum, scale, zero_point, has_m128, bad, sx, se = kernels.quantize_pack_int8(
        weight.detach(), qmin, qmax, symmetric, with_error, out=out)
    if bad >= 0:
        raise NonFiniteWeightError(f"weight holds NaN or Inf in channel {bad} (axis 0); fix or exclude it", bad)
    raise_if_dequantize_overflows(weight.detach(), scale, zero_point, qmin, qmax)
    info = torch.tensor([PACKED_LAYOUT_VERSION, rows, cols, int(has_m128), 1], dtype=torch.int32)
    buffers = {"weight_packed": packed, "weight_colsum": colsum, "weight_packed_info": info}
    if not with_error:
        return scale, zero_point, buffers, 0.0, 0.0
    return (scale, zero_point, buffers) + error_powers(weight.detach(), sx, se, qmin, qmax, symmetric)


def packed_sizes(rows: int, cols: int) -> Tuple[int, int]:
    """(bytes of the packed weight, entries of its column sums) for a [rows, cols] int8 weight."""
    return int8_packed_sizes(rows, cols)


def unpack_int8_linear(packed: torch.Tensor, info: torch.Tensor, shape, groups: Optional[int] = None) -> torch.Tensor:
    """The int8 weight of the original ``shape`` back from its packed layout
    (the exact inverse of pack_int8_linear; pure torch, so any device).

    A packed layer stores only the packed copy: this is how its plain int8
    weight (dequantize, the fallback paths, save/compare) is recovered.
    Raises ValueError when the buffers don't describe a weight of ``shape``.
    ``groups`` (the layer's): on a GPU, the geometry is taken from it and ``shape`` instead of
    reading ``info`` back to the host, a sync per call that CUDA graph capture refuses (only the
    byte count is checked then: the buffers were checked against ``info`` when made or loaded).
    """
    if packed.is_meta or info.is_meta:  # a model moved to "meta" (shape inference): no values to read
        return torch.empty(tuple(shape), dtype=torch.int8, device="meta")
    if groups is not None and info.device.type != "cpu":
        values = [PACKED_LAYOUT_VERSION, int(shape[0]), math.prod(int(d) for d in shape[1:]), 0, int(groups)]
    else:
        values = [int(v) for v in info.reshape(-1).tolist()]
    if len(values) != 5 or values[0] != PACKED_LAYOUT_VERSION:
        raise ValueError(f"unknown packed int8 layout {values}: expected version {PACKED_LAYOUT_VERSION}")
    _, n, k, _, groups = values
    shape = tuple(shape)
    if groups < 1 or n % groups or shape[0] != n or math.prod(shape[1:]) != k:
        raise ValueError(f"packed int8 info {values} does not describe a weight of shape {shape}")
    out_g = n // groups
    n_pad, k_pad = round_up(out_g, INT8_PANEL_ROWS), round_up(k, INT8_K_GROUP)
    if packed.numel() != groups * n_pad * k_pad:
        raise ValueError(f"packed int8 weight has {packed.numel()} bytes, expected {groups * n_pad * k_pad}")
    rows = unpack_int8_rows(packed, groups, out_g, k).reshape(n, k)
    if len(shape) == 4:  # conv: K was flattened in (kh, kw, in_channel) order
        return rows.reshape(n, shape[2], shape[3], shape[1]).permute(0, 3, 1, 2).contiguous()
    return rows.reshape(shape).contiguous()


def check_packed_int8(packed: torch.Tensor, colsum: torch.Tensor, info: torch.Tensor, shape) -> Optional[str]:
    """Why buffers read from a file are not what :func:`pack_int8_linear` makes of some int8
    weight of 2-D ``shape`` (one group), or None when they are: the sizes and info, zero
    padding, column sums equal to the packed rows' sums, the -128 flag right.  Cheaper than
    unpacking and packing again (one C pass over the packed bytes)."""
    n, k = (int(d) for d in shape)
    size, np_ = packed_sizes(n, k)
    if packed.dtype != torch.int8 or packed.dim() != 1 or packed.numel() != size:
        return f"weight_packed must be int8 [{size}], got {packed.dtype} {list(packed.shape)}"
    if colsum.dtype != torch.int32 or colsum.dim() != 1 or colsum.numel() != np_:
        return f"weight_colsum must be int32 [{np_}], got {colsum.dtype} {list(colsum.shape)}"
    values = info.tolist() if info.dtype == torch.int32 and info.dim() == 1 else None
    if values is None or len(values) != 5 or values[:3] != [PACKED_LAYOUT_VERSION, n, k] or values[4] != 1 \
            or values[3] not in (0, 1):
        return f"weight_packed_info {values} does not describe a [{n}, {k}] weight (layout {PACKED_LAYOUT_VERSION})"
    problem, has_m128 = _check_group(packed, colsum, n, k)
    if problem is None and has_m128 != bool(values[3]):
        return "weight_packed_info's -128 flag does not match the packed weight"
    return problem


def check_packed_module(module) -> Optional[str]:
    """:func:`check_packed_int8` for a module's packed buffers (Linear, or Conv2d with
    groups), e.g. as rebuilt from a file: why they are inconsistent, or None.  On any
    device (a state_dict loaded into a model on a GPU is checked too)."""
    if any(getattr(getattr(module, n, None), "is_meta", False) for n in PACKED_BUFFERS):
        return None  # a meta skeleton's buffers hold no values to check
    info = packed_info(module, on_cpu=False)
    if info is None:
        raw = getattr(module, "weight_packed_info", None)
        return (f"weight_packed_info {raw.tolist() if isinstance(raw, torch.Tensor) and raw.numel() <= 8 else raw} "
                f"is not [layout {PACKED_LAYOUT_VERSION}, out, in, -128 flag 0 or 1, groups], or weight_packed / "
                f"weight_colsum do not have the sizes it describes")
    n, k, groups = info["out_features"], info["in_features"], info["groups"]
    shape = tuple(getattr(module, "weight_shape", ()))
    if len(shape) < 2 or shape[0] != n or math.prod(shape[1:]) != k or getattr(module, "groups", 1) != groups:
        return (f"weight_packed_info describes a [{n}, {k}] weight in {groups} groups, the module a {list(shape)} "
                f"weight in {getattr(module, 'groups', 1)}")
    for name, allowed in (("weight_scale", (1, n)), ("weight_zero_point", (1, n)), ("bias", (n,))):
        t = getattr(module, name, None)
        if t is not None and t.numel() not in allowed:
            return f"{name} has {t.numel()} entries for {n} output channels"
    return check_packed_groups(module.weight_packed, module.weight_colsum, n, k, groups, info["has_m128"])


def check_packed_groups(packed: torch.Tensor, colsum: torch.Tensor, n: int, k: int, groups: int,
                        has_m128: bool) -> Optional[str]:
    """Why the packed buffers of an [n, k] weight in ``groups`` groups (sizes already checked)
    are not what packing makes (nonzero padding, column sums, the -128 flag), or None."""
    out_g = n // groups
    size_g, np_g = packed_sizes(out_g, k)
    any_m128 = False
    for g in range(groups):
        problem, group_m128 = _check_group(packed[g * size_g:(g + 1) * size_g], colsum[g * np_g:(g + 1) * np_g],
                                           out_g, k)
        if problem is not None:
            return problem
        any_m128 |= group_m128
    if any_m128 != bool(has_m128):
        return "weight_packed_info's -128 flag does not match the packed weight"
    return None


def _check_group(packed: torch.Tensor, colsum: torch.Tensor, n: int, k: int):
    """(problem or None, some byte is -128) for one group's packed block."""
    sums, has_m128, padding_nonzero = kernels.packed_check(packed, n, k)
    if padding_nonzero:
        return "nonzero padding past the last column or channel", has_m128
    if not torch.equal(sums, colsum.cpu()):
        return "weight_colsum does not match the packed weight", has_m128
    return None, has_m128


def packed_info(module, on_cpu: bool = True) -> Optional[dict]:
    """The packed buffers' description on a module, or None when it has none
    usable: missing, of an unknown layout version, or not the dtypes and sizes
    the info describes (a subclass may use the names for something else), or,
    with ``on_cpu`` (what the kernels need), not on the CPU."""
    info = getattr(module, "weight_packed_info", None)
    packed = getattr(module, "weight_packed", None)
    colsum = getattr(module, "weight_colsum", None)
    if info is None or packed is None or colsum is None:
        return None
    if on_cpu and any(t.device.type != "cpu" for t in (info, packed, colsum)):
        return None
    values = info.tolist() if info.dtype == torch.int32 and info.dim() == 1 else []
    if len(values) != 5 or values[0] != PACKED_LAYOUT_VERSION:
        return None
    _, out_features, in_features, has_m128, groups = values
    if groups < 1 or out_features < 1 or in_features < 1 or out_features % groups or has_m128 not in (0, 1):
        return None  # (the -128 flag is 0 or 1 as packing writes it: anything else is a damaged file)
    size_g, rows_g = int8_packed_sizes(out_features // groups, in_features)
    if (packed.dtype != torch.int8 or packed.dim() != 1 or packed.numel() != groups * size_g
            or colsum.dtype != torch.int32 or colsum.dim() != 1 or colsum.numel() != groups * rows_g):
        return None
    return {"out_features": out_features, "in_features": in_features, "has_m128": bool(has_m128), "groups": groups}
