"""Per-layer caches of what the kernels take, rebuilt when one of the layer's buffers changes:
the packed int8 kernels' prepared arguments (:func:`kernel_args`) and the float weight of a
small layer (:func:`float_weight`).

Weak maps keyed by the module, not attributes, so deepcopy and state_dict never see them.
"""
from __future__ import annotations

import weakref
from typing import Callable, Optional

import torch

from ..kernels.stamps import make_stamp, tensor_version, tensors_unchanged
from ..packing import packed_info, packed_sizes
from .call_scratch import float_scratch

__all__ = ["kernel_args", "kernel_args_stamped", "KERNEL_ARG_SOURCES", "float_weight", "SMALL_WEIGHT_ELEMENTS",
           "tensor_version", "weight_bias", "pinned", "per_layer_cache", "forget"]

# Per module, the packed weight's description and the NumPy views the C
# kernels take, built once and rebuilt when a buffer is replaced, changed in
# place (its _version moves) or moved to other memory (its data_ptr): the
# stamp (kernels/stamps.py) of KERNEL_ARG_SOURCES, checked in one C call.
_PER_LAYER_CACHES: list = []


def per_layer_cache() -> "weakref.WeakKeyDictionary":
    """A new module -> derived-data map that :func:`forget` clears for a module."""
    cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
    _PER_LAYER_CACHES.append(cache)
    return cache


def forget(module, *_hook_args) -> None:
    """Drop everything kept for ``module`` (it is rebuilt on the next call).  Run after every
    load_state_dict (a QuantizedModule's post hook): under torch.inference_mode an in-place
    load moves no version counter, so no key could see it, and derived copies (a widened
    weight, an expanded scale) would stay stale."""
    for cache in _PER_LAYER_CACHES:
        cache.pop(module, None)


_KERNEL_ARGS = per_layer_cache()

#: What the arguments are built from, as (where, name) stamp sources: the buffers they view,
#: and the bias: a Parameter, or a plain tensor attribute (assigned after load) that
#: _build_args reads as module.bias too.
KERNEL_ARG_SOURCES = (("_buffers", "weight_packed_info"), ("_buffers", "weight_packed"),
                      ("_buffers", "weight_colsum"), ("_buffers", "weight_scale"),
                      ("_buffers", "weight_zero_point"), ("_parameters", "bias"), (None, "bias"))


def kernel_args(module):
    """``(info, per-group argument tuples, whole-weight tuple)`` for
    ``kernels.int8.linear_int8_raw`` / ``conv2d_int8_raw``, or None when the module has no
    usable packed weight (see packing.packed_info)."""
    cached = _KERNEL_ARGS.get(module)
    if cached is not None and tensors_unchanged(module.__dict__, cached[0]):
        return cached[1]
    return kernel_args_stamped(module)[1]


def kernel_args_stamped(module) -> tuple:
    """``(stamp, kernel_args(module))``: the arguments with the stamp of what they were
    built from, for a caller that keeps them (it checks the stamp instead of asking again)."""
    cached = _KERNEL_ARGS.get(module)
    if cached is not None and tensors_unchanged(module.__dict__, cached[0]):
        return cached
    stamp = make_stamp(module, KERNEL_ARG_SOURCES)
    info = packed_info(module)
    # (scales and bias too: a layer half on a GPU, as a model whose packed weight stayed on the CPU,
    # takes the torch path rather than reading GPU memory as NumPy)
    if info is not None and any(t is not None and t.device.type != "cpu" for t in
                                (getattr(module, name, None) for name in ("weight_scale", "weight_zero_point",
                                                                          "bias"))):
        info = None
    result = None if info is None else (info, *_build_args(module, info))
    cached = (stamp, result)
    _KERNEL_ARGS[module] = cached
    return cached


# A layer whose dequantized float32 weight is at most this many elements (256 KiB) keeps
# it, for the paths that run torch's ops on the dequantized weight: for such a weight
# the per-call dequantization (a few torch and C calls, ~10-30 us) costs as much as the
# product itself (a first conv on RGB, a small classifier head, the convs of a small
# CNN); 256 KiB per layer is little next to the activations of any model that has such
# layers.  Larger weights are made per call, in this thread's buffer where they may
# (formats/call_scratch.py: a fresh tensor of megabytes is new pages, faulted in per call).
SMALL_WEIGHT_ELEMENTS = 65536
_SMALL_WEIGHTS = per_layer_cache()


def float_weight(module, numel: int, dequantize, packed=None, *, op_inputs: Optional[tuple] = None,
                 fill: Optional[Callable[[], Optional[tuple]]] = None) -> torch.Tensor:
    """``dequantize()`` (the module's float32 weight, ``numel`` elements), kept per module
    when ``numel <= SMALL_WEIGHT_ELEMENTS`` until one of its buffers changes.  ``packed``:
    the module's kernel_args, whose identity then stands for its buffers (kernel_args
    rebuilds them when a buffer changes), else the buffers are compared as kernel_args does.

    A larger weight is made per call: with ``op_inputs`` (the other tensors of the torch op
    that takes it; None where the op is not an eager CPU call) in this thread's buffer where
    call_scratch.float_scratch allows it, written there by ``fill_fn(out)`` where ``fill()``
    (asked only for such a weight) gives ``(shape, fill_fn)``, or else copied from
    ``dequantize()``'s fresh tensor (dropped before the op: alive through torch's op, it made
    the op's own buffers come from new pages)."""
    if numel > SMALL_WEIGHT_ELEMENTS:
        if op_inputs is None:
            return dequantize()
        shape_fill = None if fill is None else fill()
        if shape_fill is not None:
            out = float_scratch(shape_fill[0], *op_inputs)
            return dequantize() if out is None else shape_fill[1](out)
        weight = dequantize()
        out = float_scratch(weight.shape, *op_inputs, weight)
        return weight if out is None else out.copy_(weight)
    cached = _SMALL_WEIGHTS.get(module)
    if packed is not None:
        if cached is not None and cached[0] is packed:
            return cached[1]
        key = packed
    else:
        key = tuple([(name, id(t), tensor_version(t), t.data_ptr()) for name, t in module._buffers.items()
                     if t is not None])
        if cached is not None and cached[0] == key:
            return cached[1]
    weight = dequantize()
    # (the buffers pinned: their addresses are in the key; see pinned)
    _SMALL_WEIGHTS[module] = (key, weight, None if packed is not None else pinned(*module._buffers.values()))
    return weight


def _build_args(module, info: dict):
    n, k, groups = info["out_features"], info["in_features"], info["groups"]
    packed, colsum = module.weight_packed, module.weight_colsum
    scale = module.weight_scale.detach().to(torch.float32).expand(n).contiguous()  # per-tensor: one for all
    zp = module.weight_zero_point.detach().to(torch.int32).expand(n).contiguous()
    bias = None if module.bias is None else module.bias.detach().to(torch.float32).contiguous()
    out_g = n // groups
    packed_size, colsum_size = packed_sizes(out_g, k)
    whole = (packed.numpy(), colsum.numpy(), scale.numpy(), zp.numpy(), None if bias is None else bias.numpy(), n,
             info["has_m128"])
    per_group = []
    for g in range(groups):
        lo, hi = g * out_g, (g + 1) * out_g
        per_group.append((
            packed[g * packed_size:(g + 1) * packed_size].numpy(), colsum[g * colsum_size:(g + 1) * colsum_size].numpy(),
            scale[lo:hi].numpy(), zp[lo:hi].numpy(), None if bias is None else bias[lo:hi].numpy(),
            out_g, info["has_m128"],
        ))
    return per_group, whole


def weight_bias(module):
    """A layer's weight buffer and its bias (a Parameter, or a plain tensor after load or a
    user's assignment), and a key that changes when either is replaced, written in place
    (its version) or given new storage (``.data =``): what a per-layer memo is valid for.
    A memo keeps :func:`pinned` of the two beside the key, so that the storage the key's
    addresses name cannot be freed and reused by a later ``.data =`` while the memo lives."""
    weight = module._buffers["weight"]
    bias = module._parameters.get("bias", module.__dict__.get("bias"))
    try:
        key = [(id(t), t._version, t.data_ptr()) if t is not None else None for t in (weight, bias)]
    except RuntimeError:  # made under torch.inference_mode: no version counter
        key = [(id(t), tensor_version(t), t.data_ptr()) if t is not None else None for t in (weight, bias)]
    return weight, bias, key


def pinned(*tensors) -> tuple:
    """Aliases of ``tensors`` (None kept) that hold their storage: kept beside a key of
    ``data_ptr()`` values, no other tensor can be given those addresses (two ``.data =``
    in a row could otherwise land on the address the key remembers)."""
    return tuple(None if t is None else t.detach() for t in tensors)
