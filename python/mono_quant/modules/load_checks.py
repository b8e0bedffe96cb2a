"""The checks ``load_state_dict`` makes of a quantized layer's weight tensors before torch
copies them in: the ones :func:`mono_quant.load` makes of a file's (the format's
``check_tensors``: dtypes, sizes, scales in range, zero-points; ``packing.check_packed_module``:
the packed int8 buffers' padding, column sums and -128 flag).  A state_dict is untrusted
input like a file: a NaN, zero or out-of-range scale, or column sums that disagree with the
packed weight, would otherwise give wrong outputs with no error."""
from __future__ import annotations

import types
from typing import Mapping

import torch

from ..errors import CheckpointError
from ..formats import BadLayer
from ..packing import PACKED_BUFFERS, check_packed_module

__all__ = ["check_loaded_weight", "incoming_weight_tensors"]


def check_loaded_weight(module, state_dict: Mapping, prefix: str, assign: bool) -> None:
    """Raise CheckpointError naming the layer when the weight tensors ``module`` would hold
    after loading ``state_dict``'s ``prefix`` entries (those it has, over the ones it keeps)
    are not a valid weight of its format, or when an incoming tensor's shape is not the one
    the layer holds.  Nothing is copied before this passes."""
    _check_shapes(module, state_dict, prefix)
    fmt = module.format
    if not fmt.integer:
        return
    buffers = module._buffers
    names = _weight_buffer_names(module)
    if not any(prefix + n in state_dict for n in names):
        return  # (a load of the float layers, or of the bias only)
    stored = {n: _stored(buffers[n], state_dict.get(prefix + n), assign) for n in names}
    if any(t.is_meta for t in stored.values()):
        return  # a meta skeleton holds no values yet
    try:
        fmt.check_tensors(module.weight_symmetric, module.weight_axis, module.weight_group_size,
                          tuple(module.weight_shape), stored)
        if any(prefix + n in state_dict for n in PACKED_BUFFERS):  # the kernels trust these
            problem = check_packed_module(types.SimpleNamespace(
                **stored, weight_shape=module.weight_shape, groups=getattr(module, "groups", 1), bias=module.bias))
            if problem:
                raise BadLayer(f"bad packed int8 weight: {problem}")
    except BadLayer as exc:
        name = prefix[:-1] or "<root>"
        raise CheckpointError(
            f"load_state_dict: layer {name!r} (keys '{prefix}weight_*'): {exc}. These are not the {fmt.name} "
            f"tensors mono-quant writes: load a state_dict saved from a quantized model of this architecture "
            f"(qmodel.state_dict(), or mq.save / mq.load for files), or quantize the float model again") from None


def _check_shapes(module, state_dict: Mapping, prefix: str) -> None:
    """torch copies every entry of the right shape and reports the others only after the whole load:
    a layer's codes from one file with its scales kept from another (another group size, format or
    width) computed garbage once the error was caught.  Refused here, before any copy."""
    for name, current in list(module._parameters.items()) + list(module._buffers.items()):
        incoming = state_dict.get(prefix + name)
        if current is None or not isinstance(incoming, torch.Tensor) or incoming.shape == current.shape:
            continue
        if current.dim() == 0 and incoming.shape == (1,):  # (torch loads a [1] tensor into a 0-d one)
            continue
        layer = prefix[:-1] or "<root>"
        raise CheckpointError(
            f"load_state_dict: layer {layer!r}: {prefix + name!r} has shape {list(incoming.shape)} in the state_dict, "
            f"the layer holds {list(current.shape)} ({module.format.name}): a state_dict of another format, group "
            f"size or layer width; nothing was loaded. Load one saved from a quantized model quantized as this one "
            f"(qmodel.state_dict(), or mq.save / mq.load for files), or quantize the float model again")


def incoming_weight_tensors(module, state_dict: Mapping, prefix: str) -> dict:
    """The ``state_dict`` entries (key -> value, None where absent) that ``check_loaded_weight`` reads."""
    names = _weight_buffer_names(module) if module.format.integer else []
    return {prefix + n: state_dict.get(prefix + n) for n in names}


def _weight_buffer_names(module) -> list:
    buffers = module._buffers
    return [n for n in module.format.weight_buffers + PACKED_BUFFERS if buffers.get(n) is not None]


def _stored(current: torch.Tensor, incoming, assign: bool) -> torch.Tensor:
    """What the buffer will hold after torch's load (``Module._load_from_state_dict``): the
    incoming tensor as it is (``assign``) or cast into the current buffer's dtype, on the CPU
    for the checks; the current one where torch skips the entry (not a tensor, another shape:
    torch reports those itself)."""
    chosen = current
    if isinstance(incoming, torch.Tensor):
        if current.dim() == 0 and incoming.shape == (1,):  # torch loads a [1] tensor into a 0-d one
            incoming = incoming[0]
        if incoming.shape == current.shape:
            chosen = incoming if assign else incoming.to(dtype=current.dtype)
    return chosen.detach() if chosen.is_meta else chosen.detach().cpu()
