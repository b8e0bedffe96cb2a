"""Save / load checks for the concatenation and broadcasting-add layers (modules_eltwise.py)
and a float add holding a constant: called by persist.py, which reads the file."""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from ..errors import CheckpointError
from .graph import FusedAddFloat
from .modules_eltwise import StaticBroadcastAdd, StaticCat

__all__ = ["ELTWISE_CLASSES", "attach_eltwise_tensors", "build_fused_add", "check_constant_shape"]

ELTWISE_CLASSES = (StaticCat, StaticBroadcastAdd)


def check_constant_shape(name: str, kwargs: dict, own: Dict[str, torch.Tensor]) -> None:
    """Before a StaticBroadcastAdd is built: its const_shape is the shape of the file's b_codes (the
    constructor allocates a buffer of that shape, which a manifest could make any size)."""
    shape, codes = kwargs.get("const_shape"), own.get("b_codes")
    if shape is not None and (codes is None or list(codes.shape) != shape):
        found = "none" if codes is None else list(codes.shape)
        raise CheckpointError(f"layer {name!r}: const_shape {shape!r} but the file's b_codes is {found}")


def attach_eltwise_tensors(name: str, m: nn.Module, own: Dict[str, torch.Tensor]) -> None:
    """Check and attach the tensors of a StaticCat (none) or StaticBroadcastAdd (its constant's codes)."""
    where = f"layer {name!r}"
    expected = {"b_codes"} if getattr(m, "const_shape", None) is not None else set()
    if set(own) != expected:
        raise CheckpointError(f"{where}: tensors {sorted(own)}, expected {sorted(expected)}")
    if expected:
        t = own["b_codes"]
        if t.dtype != torch.int8 or list(t.shape) != m.const_shape:
            raise CheckpointError(f"{where} b_codes: expected int8{m.const_shape}, got "
                                  f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}")
        if bool((t == -128).any()):
            raise CheckpointError(f"{where}: b_codes holds -128 (activation codes are -127..127)")
        m.register_buffer("b_codes", t.contiguous())


def build_fused_add(name: str, kwargs: dict, own: Dict[str, torch.Tensor]) -> FusedAddFloat:
    """A float add, with its constant operand when the file holds one (finite float32)."""
    if set(own) - {"const"}:
        raise CheckpointError(f"layer {name!r} (FusedAddFloat) has unexpected tensors {sorted(own)}")
    const = own.get("const")
    if const is not None and (const.dtype != torch.float32 or not bool(torch.isfinite(const).all())):
        raise CheckpointError(f"layer {name!r} (FusedAddFloat): const must be finite float32, got {const.dtype}")
    return FusedAddFloat(kwargs["act"], const)
