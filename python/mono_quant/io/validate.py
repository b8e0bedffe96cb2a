"""Checks, at load, of everything in a file that a quantized module or a kernel will trust:
each layer's manifest fields against their allowed values and against each other, and its
tensors against the format (dtypes and sizes for the layer's shape, finite positive scales,
zero-points in range).  A file is untrusted input: a value no writer of ours produces is a
:class:`CheckpointError` naming the layer, never a wrong output or an error at forward.

The packed int8 buffers have their own, deeper check (``packing.check_packed_int8`` /
``check_packed_module``: padding and column sums), run when a module is built from them.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Optional

import torch

from ..int4 import effective_group
from ..modules.linear import ACTIVATION_MODES
from ..modules.registry import QMODULES, QMODULES_BY_NAME
from ..qtypes import QTYPES, QType
from .errors import CheckpointError
from .manifest import quantized_class

__all__ = ["check_layer", "check_weight_tensors", "ALLOWED_LAYER_TENSORS"]

#: every tensor name a quantized layer may store
ALLOWED_LAYER_TENSORS = frozenset({"weight_qdata", "weight_scale", "weight_zero_point", "weight_packed",
                                   "weight_colsum", "weight_packed_info", "weight", "bias"})
_PACKED = ("weight_packed", "weight_colsum", "weight_packed_info")
_INT4_BLOCK = 32


class _Bad(Exception):
    """One problem with a layer, turned into a CheckpointError naming it by check_layer."""


def _need(ok: bool, message) -> None:
    """Raise _Bad(message) unless ``ok``; ``message`` may be a callable (built only on failure)."""
    if not ok:
        raise _Bad(message() if callable(message) else message)


def _is_int(value, low: Optional[int] = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def _int_list(value, length: int, low: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(_is_int(v, low) for v in value)


def _float_dtype(name) -> Optional[torch.dtype]:
    value = getattr(torch, name, None) if isinstance(name, str) else None
    return value if isinstance(value, torch.dtype) and value.is_floating_point else None


def check_layer(kind: str, layer: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], where: str = "") -> None:
    """Raise :class:`CheckpointError` naming the layer when its manifest entry (kind
    "model" or "state_dict") or its own ``tensors`` (by local name) are not what a writer
    of this format makes.  ``where`` prefixes the message (the file)."""
    name = layer.get("name") or "<root>"
    try:
        qtype = _check_common_fields(layer)
        if kind == "model":
            _check_model_fields(layer, qtype)
        else:
            _check_state_dict_fields(layer, qtype)
        group_size = layer.get("group_size") if qtype.name == "int4" else None
        if kind == "model" and layer["class"] not in _KWARGS:
            # a registered subclass may keep buffers of its own: check the ones the format defines
            tensors = {k: t for k, t in tensors.items() if k in ALLOWED_LAYER_TENSORS}
        check_weight_tensors(qtype, layer["scheme"] == "symmetric", layer.get("axis"), group_size,
                             tuple(layer["shape"]), tensors)
    except _Bad as exc:
        raise CheckpointError(f"{where}layer {name!r}: {exc}") from None


def _check_common_fields(layer: Mapping[str, Any]) -> QType:
    dtype = layer.get("dtype")
    _need(dtype in QTYPES, f"dtype {dtype!r} is not one of {sorted(QTYPES)}")
    qtype = QTYPES[dtype]
    scheme = layer.get("scheme")
    allowed = ("symmetric", "asymmetric") if qtype.kind == "int" else ("cast",)
    _need(scheme in allowed, f"scheme {scheme!r} is not one of {allowed} for {dtype}")
    shape = layer["shape"]
    _need(len(shape) >= 2 if qtype.kind == "int" else len(shape) >= 1,
          f"shape {shape} has too few dimensions for a {dtype} weight")
    orig = layer.get("orig_dtype")
    _need(orig is None or _float_dtype(orig) is not None, f"orig_dtype {orig!r} is not a floating dtype")
    axis = layer.get("axis")
    if qtype.kind != "int":
        _need(axis is None, f"axis {axis!r} on a {dtype} (cast) layer")
    elif qtype.name == "int4":
        _need(axis == 0, f"axis {axis!r}: int4 weights are grouped with axis 0")
    else:
        _need(axis is None or (_is_int(axis, 0) and axis < len(shape)),
              f"axis {axis!r} is not None or a dimension of shape {shape}")
    return qtype


def _check_int4_group_size(group_size) -> None:
    _need(group_size is None or (_is_int(group_size, 1) and group_size % _INT4_BLOCK == 0),
          f"int4 group_size {group_size!r} is not None or a positive multiple of {_INT4_BLOCK}")


def _check_state_dict_fields(layer: Mapping[str, Any], qtype: QType) -> None:
    types = sorted([t.__name__ for t in QMODULES] + [n.rsplit(".", 1)[-1] for n in QMODULES_BY_NAME])
    _need(layer.get("type") is None or layer.get("type") in types,
          f"type {layer.get('type')!r} is not one of {types}")
    group_size = layer.get("group_size")
    if qtype.name == "int4":
        _check_int4_group_size(group_size or None)  # 0: per channel, as a config file writes it
    else:  # older writers recorded the config's (unused) int4 group size on every layer
        _need(group_size is None or _is_int(group_size, 0), f"group_size {group_size!r} is not an int or null")


# ---- kind "model": constructor arguments and state attributes ---------------------------------


def _linear_kwargs(kw) -> tuple:
    _need(_is_int(kw.get("in_features"), 0), f"in_features {kw.get('in_features')!r} is not an int >= 0")
    _need(_is_int(kw.get("out_features"), 0), f"out_features {kw.get('out_features')!r} is not an int >= 0")
    return kw["out_features"], kw["in_features"]


_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _conv_kwargs(kw) -> tuple:
    for key in ("in_channels", "out_channels"):
        _need(_is_int(kw.get(key), 0), f"{key} {kw.get(key)!r} is not an int >= 0")
    groups = kw.get("groups", 1)
    _need(_is_int(groups, 1) and kw["in_channels"] % groups == 0 and kw["out_channels"] % groups == 0,
          f"groups {groups!r} is not a positive int dividing in_channels and out_channels")
    for key in ("kernel_size", "stride", "dilation"):
        _need(_int_list(kw.get(key), 2, 1), f"{key} {kw.get(key)!r} is not a list of two positive ints")
    padding = kw.get("padding")
    _need(padding in ("same", "valid") or _int_list(padding, 2, 0),
          f"padding {padding!r} is not 'same', 'valid' or a list of two ints >= 0")
    _need(kw.get("padding_mode", "zeros") in _PADDING_MODES,
          f"padding_mode {kw.get('padding_mode')!r} is not one of {_PADDING_MODES}")
    return (kw["out_channels"], kw["in_channels"] // groups, *kw["kernel_size"])


def _embedding_kwargs(kw) -> tuple:
    num, dim = kw.get("num_embeddings"), kw.get("embedding_dim")
    _need(_is_int(num, 0), f"num_embeddings {num!r} is not an int >= 0")
    _need(_is_int(dim, 0), f"embedding_dim {dim!r} is not an int >= 0")
    padding_idx = kw.get("padding_idx")
    _need(padding_idx is None or (_is_int(padding_idx) and -num <= padding_idx < num),
          f"padding_idx {padding_idx!r} is not None or a row of the {num}-row table")
    return num, dim


# built-in class name -> the check of its init_kwargs, giving the weight shape they describe
_KWARGS: Dict[str, Callable[[Mapping], tuple]] = {
    "QuantizedLinear": _linear_kwargs, "QuantizedConv2d": _conv_kwargs, "QuantizedEmbedding": _embedding_kwargs,
}


def _check_model_fields(layer: Mapping[str, Any], qtype: QType) -> None:
    cls = quantized_class(layer["class"])
    _need(layer.get("type") == cls.float_type.__name__,
          f"type {layer.get('type')!r} disagrees with class {cls.__name__} (a {cls.float_type.__name__})")
    kwargs, attrs = layer["init_kwargs"], layer["attrs"]
    _need(kwargs.get("weight_format") == qtype.name,
          f"init_kwargs weight_format {kwargs.get('weight_format')!r} disagrees with dtype {qtype.name!r}")
    check_kwargs = _KWARGS.get(cls.__name__)
    if check_kwargs is not None:
        shape = list(check_kwargs(kwargs))
        _need(shape == list(layer["shape"]), f"init_kwargs describe a weight of shape {shape}, the layer "
                                             f"{layer['shape']}")
    unknown = sorted(set(attrs) - set(cls.state_attrs))
    _need(not unknown, lambda: f"unknown saved attribute {unknown[0]!r} for {cls.__name__}")
    fmt = attrs.get("weight_format", qtype.name)
    _need(fmt == qtype.name, f"attrs weight_format {fmt!r} disagrees with dtype {qtype.name!r}")
    symmetric = attrs.get("weight_symmetric", False)
    _need(isinstance(symmetric, bool), f"weight_symmetric {symmetric!r} is not true or false")
    if qtype.kind == "int":
        _need(symmetric == (layer["scheme"] == "symmetric"),
              f"weight_symmetric {symmetric} disagrees with scheme {layer['scheme']!r}")
        axis = attrs.get("weight_axis", 0)
        _need(axis is None or _is_int(axis), f"weight_axis {axis!r} is not an int or null")
        _need(axis == layer.get("axis"), f"weight_axis {axis!r} disagrees with axis {layer.get('axis')!r}")
    group_size = attrs.get("weight_group_size")
    if qtype.name == "int4":
        _check_int4_group_size(group_size)
    else:
        _need(group_size is None, f"weight_group_size {group_size!r} on a {qtype.name} layer (int4 only)")
    _need(group_size == layer.get("group_size"),
          f"weight_group_size {group_size!r} disagrees with group_size {layer.get('group_size')!r}")
    orig = attrs.get("orig_dtype", "float32")
    _need(_float_dtype(orig) is not None, f"orig_dtype {orig!r} is not a floating dtype")
    _need(layer.get("orig_dtype") in (None, orig), f"attrs orig_dtype {orig!r} disagrees with orig_dtype "
                                                   f"{layer.get('orig_dtype')!r}")
    if "activations" in attrs:
        _need(attrs["activations"] in ACTIVATION_MODES,
              f"activations {attrs['activations']!r} is not one of {ACTIVATION_MODES}")
    if "_reversed_padding_repeated_twice" in attrs:
        _check_conv_padding(attrs["_reversed_padding_repeated_twice"], kwargs)


def _check_conv_padding(value, kwargs) -> None:
    """What nn.Conv2d derives from its padding (F.pad takes it for non-"zeros" padding modes)."""
    _need(value is None or _int_list(value, 4, 0), f"_reversed_padding_repeated_twice {value!r} is not four ints >= 0")
    padding = kwargs.get("padding")
    if isinstance(padding, list) and value is not None:
        expected = [padding[1], padding[1], padding[0], padding[0]]
        _need(value == expected, f"_reversed_padding_repeated_twice {value} disagrees with padding {padding}")


# ---- tensors -------------------------------------------------------------------------------------


def _spec(t: torch.Tensor) -> str:
    return f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}"


def check_weight_tensors(qtype: QType, symmetric: bool, axis: Optional[int], group_size: Optional[int],
                         shape: tuple, tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise ``_Bad`` when a layer's own tensors are not a valid ``qtype`` weight of
    ``shape``: names, dtypes, sizes, scales (finite, > 0), zero-points (in range)."""
    unknown = set(tensors) - ALLOWED_LAYER_TENSORS
    _need(not unknown, f"unexpected tensors {sorted(unknown)}")
    bias = tensors.get("bias")
    if bias is not None:
        _need(bias.is_floating_point() and list(bias.shape) == [shape[0]],
              f"bias is {_spec(bias)}, expected a float vector of {shape[0]}")
    if qtype.kind != "int":
        weight = tensors.get("weight")
        _need(weight is not None and weight.dtype == qtype.storage and tuple(weight.shape) == shape,
              f"a {qtype.name} layer needs 'weight' of {str(qtype.storage).replace('torch.', '')}{list(shape)}"
              + ("" if weight is None else f", got {_spec(weight)}"))
        extra = set(tensors) - {"weight", "bias"}
        _need(not extra, f"unexpected tensors {sorted(extra)} for a {qtype.name} layer")
        return
    _need("weight" not in tensors, f"a float 'weight' in a {qtype.name} layer")
    if qtype.name == "int4":
        _check_int4_tensors(symmetric, group_size, shape, tensors)
    else:
        _check_int8_tensors(qtype, symmetric, axis, shape, tensors)


def _check_int8_tensors(qtype: QType, symmetric: bool, axis: Optional[int], shape: tuple, tensors) -> None:
    packed = [n for n in _PACKED if n in tensors]
    qdata = tensors.get("weight_qdata")
    if qdata is None:
        _need(len(packed) == len(_PACKED) and qtype.name == "int8",
              f"a {qtype.name} layer needs weight_qdata (or, for int8, all of {list(_PACKED)}), has {sorted(tensors)}")
        _need(axis in (0, None), f"packed int8 weights are per output channel or per tensor, axis is {axis}")
    else:
        _need(not packed, f"both weight_qdata and packed buffers {packed}")
        _need(qdata.dtype == qtype.storage and tuple(qdata.shape) == shape,
              f"inconsistent {qtype.name} tensors: weight_qdata is {_spec(qdata)}, expected {str(qtype.storage).replace('torch.', '')}{list(shape)}")
    channels = 1 if axis is None else shape[axis]
    scale, zero_point = tensors.get("weight_scale"), tensors.get("weight_zero_point")
    _need(scale is not None and zero_point is not None, "weight_scale and weight_zero_point are needed")
    _need(scale.dtype == torch.float32 and scale.dim() <= 1 and scale.numel() == channels,
          f"inconsistent {qtype.name} tensors: weight_scale is {_spec(scale)}, expected float32 [{channels}] "
          f"(axis {axis}, shape {list(shape)})")
    _need(zero_point.dtype == torch.int32 and zero_point.dim() <= 1 and zero_point.numel() == channels,
          f"inconsistent {qtype.name} tensors: weight_zero_point is {_spec(zero_point)}, expected int32 "
          f"[{channels}] (axis {axis}, shape {list(shape)})")
    _check_scales(scale)
    qmin, qmax = qtype.qrange(False)
    if symmetric:
        sym_qmin, sym_qmax = qtype.qrange(True)
        expected = 0 if sym_qmin < 0 else (sym_qmin + sym_qmax + 1) // 2
        bad = _first_bad(zero_point != expected)
        _need(bad is None, lambda: f"weight_zero_point[{bad}] = {_at(zero_point, bad)}: a symmetric {qtype.name} "
                                   f"zero-point is {expected}")
    else:
        bad = _first_bad((zero_point < qmin) | (zero_point > qmax))
        _need(bad is None, lambda: f"weight_zero_point[{bad}] = {_at(zero_point, bad)} is outside {qtype.name}'s "
                                   f"{qmin}..{qmax}")


def _check_int4_tensors(symmetric: bool, group_size: Optional[int], shape: tuple, tensors) -> None:
    _check_int4_group_size(group_size or None)
    rows, cols = shape[0], math.prod(shape[1:])
    kpad = -(-cols // _INT4_BLOCK) * _INT4_BLOCK
    groups = -(-kpad // effective_group(cols, group_size or None))
    extra = set(tensors) - {"weight_qdata", "weight_scale", "weight_zero_point", "bias"}
    _need(not extra, f"unexpected tensors {sorted(extra)} for an int4 layer")
    expected = {"weight_qdata": (torch.uint8, [rows, kpad // 2]), "weight_scale": (torch.float16, [rows, groups]),
                "weight_zero_point": (torch.uint8, [rows, groups])}
    for local, (dtype, tshape) in expected.items():
        t = tensors.get(local)
        _need(t is not None and t.dtype == dtype and list(t.shape) == tshape,
              f"inconsistent int4 tensors: {local} is {'missing' if t is None else _spec(t)}, expected "
              f"{str(dtype).replace('torch.', '')}{tshape} for shape {list(shape)} and group_size {group_size}")
    _check_scales(tensors["weight_scale"])
    if symmetric:
        zero_point = tensors["weight_zero_point"]
        bad = _first_bad(zero_point != 128)
        _need(bad is None, lambda: f"weight_zero_point[{bad}] = {_at(zero_point, bad)}: a symmetric int4 "
                                   f"zero-point is 128 (8 in u4.4)")


def _check_scales(scale: torch.Tensor) -> None:
    bad = _first_bad(~(torch.isfinite(scale) & (scale > 0)))
    _need(bad is None, lambda: f"weight_scale[{bad}] = {_at(scale, bad)}: scales must be finite and > 0")


def _first_bad(mask: torch.Tensor) -> Optional[int]:
    """The flat index of the first true entry, or None."""
    flat = mask.reshape(-1)
    return int(flat.nonzero()[0, 0]) if bool(flat.any()) else None


def _at(t: torch.Tensor, index: int):
    return t.reshape(-1)[index].item()
