"""Checks, at load, of everything in a file that a quantized module or a kernel will trust:
each layer's manifest fields against their allowed values and against each other, and its
tensors against the format (dtypes and sizes for the layer's shape, finite positive scales,
zero-points in range).  A file is untrusted input: a value no writer of ours produces is a
:class:`CheckpointError` naming the layer, never a wrong output or an error at forward.

The format objects (:mod:`mono_quant.formats`) hold the checks of their own fields and
tensors; this module holds what all layers share and the module classes' arguments.
The packed int8 buffers have their own, deeper check (``packing.check_packed_int8`` /
``check_packed_module``: padding and column sums), run when a module is built from them.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, Mapping, Optional

import torch

from ..formats import ACTIVATION_MODES, ALLOWED_LAYER_TENSORS, FORMATS, BadLayer, WeightFormat
from ..formats.checks import is_int, need, spec
from ..modules.composite import is_composite
from ..modules.embedding_bag import EMBEDDING_BAG_MODES
from ..modules.registry import QMODULES, QMODULES_BY_NAME
from ..orig_dtype import ORIG_DTYPES
from .dtypes import dtype_name
from .errors import CheckpointError
from .manifest import quantized_class

__all__ = ["check_bias", "check_layer", "check_layer_fields", "check_weight_tensors", "ALLOWED_LAYER_TENSORS"]


def _int_list(value, length: int, low: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(is_int(v, low) for v in value)


def _orig_dtype(name) -> Optional[torch.dtype]:
    """The dtype a weight may stand for (``ORIG_DTYPES``) by its manifest name, or None."""
    return next((d for d in ORIG_DTYPES if dtype_name(d) == name), None)


_ORIG_DTYPE_NAMES = [dtype_name(d) for d in ORIG_DTYPES]


def check_layer(kind: str, layer: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], where: str = "") -> None:
    """Raise :class:`CheckpointError` naming the layer when its manifest entry (kind
    "model" or "state_dict") or its own ``tensors`` (by local name) are not what a writer
    of this format makes.  ``where`` prefixes the message (the file)."""
    name = layer.get("name") or "<root>"
    try:
        fmt = _check_common_fields(layer)
        if _FIELD_CHECKS[kind](layer, fmt):
            # a registered subclass may keep buffers of its own: check the ones the format defines
            tensors = {k: t for k, t in tensors.items() if k in ALLOWED_LAYER_TENSORS}
        check_weight_tensors(fmt, layer["scheme"] == "symmetric", layer.get("axis"), layer.get("group_size"),
                             tuple(layer["shape"]), tensors)
    except BadLayer as exc:
        raise CheckpointError(f"{where}layer {name!r}: {exc}") from None


def check_layer_fields(kind: str, layer: Mapping[str, Any], where: str = "") -> None:
    """:func:`check_layer` without the tensors: the fields of a layer entry (kind "model" or
    "state_dict") against their allowed values and each other, before any module is built
    from them (a Hugging Face ``quantization_config.layers`` entry, whose tensors come later)."""
    try:
        _FIELD_CHECKS[kind](layer, _check_common_fields(layer))
    except (BadLayer, CheckpointError) as exc:  # (an unknown class is a CheckpointError of its own)
        raise CheckpointError(f"{where}layer {layer.get('name') or '<root>'!r}: {exc}") from None


def _check_common_fields(layer: Mapping[str, Any]) -> WeightFormat:
    dtype = layer.get("dtype")
    need(dtype in FORMATS, f"dtype {dtype!r} is not one of {sorted(FORMATS)}")
    fmt = FORMATS[dtype]
    fmt.check_fields(layer)
    orig = layer.get("orig_dtype")
    need(orig is None or _orig_dtype(orig) is not None, f"orig_dtype {orig!r} is not one of {_ORIG_DTYPE_NAMES}")
    fmt.check_axis(layer.get("axis"), layer["shape"])
    return fmt


def _check_state_dict_fields(layer: Mapping[str, Any], fmt: WeightFormat) -> bool:
    types = sorted([t.__name__ for t, c in QMODULES.items() if not is_composite(c)]
                   + [n.rsplit(".", 1)[-1] for n in QMODULES_BY_NAME])
    need(layer.get("type") is None or layer.get("type") in types,
          f"type {layer.get('type')!r} is not one of {types}")
    fmt.check_group_size(layer.get("group_size"), saved_attr=False)
    return False


# ---- kind "model": constructor arguments and state attributes ---------------------------------


def _linear_kwargs(kw) -> tuple:
    need(is_int(kw.get("in_features"), 0), f"in_features {kw.get('in_features')!r} is not an int >= 0")
    need(is_int(kw.get("out_features"), 0), f"out_features {kw.get('out_features')!r} is not an int >= 0")
    return kw["out_features"], kw["in_features"]


_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _conv_kwargs(kw) -> tuple:
    for key in ("in_channels", "out_channels"):
        need(is_int(kw.get(key), 0), f"{key} {kw.get(key)!r} is not an int >= 0")
    groups = kw.get("groups", 1)
    need(is_int(groups, 1) and kw["in_channels"] % groups == 0 and kw["out_channels"] % groups == 0,
          f"groups {groups!r} is not a positive int dividing in_channels and out_channels")
    for key in ("kernel_size", "stride", "dilation"):
        need(_int_list(kw.get(key), 2, 1), f"{key} {kw.get(key)!r} is not a list of two positive ints")
    padding = kw.get("padding")
    need(padding in ("same", "valid") or _int_list(padding, 2, 0),
          f"padding {padding!r} is not 'same', 'valid' or a list of two ints >= 0")
    need(kw.get("padding_mode", "zeros") in _PADDING_MODES,
          f"padding_mode {kw.get('padding_mode')!r} is not one of {_PADDING_MODES}")
    return (kw["out_channels"], kw["in_channels"] // groups, *kw["kernel_size"])


def _embedding_kwargs(kw) -> tuple:
    num, dim = kw.get("num_embeddings"), kw.get("embedding_dim")
    need(is_int(num, 0), f"num_embeddings {num!r} is not an int >= 0")
    need(is_int(dim, 0), f"embedding_dim {dim!r} is not an int >= 0")
    padding_idx = kw.get("padding_idx")
    need(padding_idx is None or (is_int(padding_idx) and -num <= padding_idx < num),
          f"padding_idx {padding_idx!r} is not None or a row of the {num}-row table")
    return num, dim


def _embedding_bag_kwargs(kw) -> tuple:
    shape = _embedding_kwargs(kw)
    need(kw.get("mode", "mean") in EMBEDDING_BAG_MODES,
          f"mode {kw.get('mode')!r} is not one of {EMBEDDING_BAG_MODES}")
    need(isinstance(kw.get("include_last_offset", False), bool),
          f"include_last_offset {kw.get('include_last_offset')!r} is not a bool")
    return shape


# built-in class name -> the check of its init_kwargs, giving the weight shape they describe
_KWARGS: Dict[str, Callable[[Mapping], tuple]] = {
    "QuantizedLinear": _linear_kwargs, "QuantizedConv2d": _conv_kwargs, "QuantizedEmbedding": _embedding_kwargs,
    "QuantizedEmbeddingBag": _embedding_bag_kwargs,
}


def _check_model_fields(layer: Mapping[str, Any], fmt: WeightFormat) -> bool:
    cls = quantized_class(layer["class"])
    need(layer.get("type") == cls.float_type.__name__,
          f"type {layer.get('type')!r} disagrees with class {cls.__name__} (a {cls.float_type.__name__})")
    kwargs, attrs = layer["init_kwargs"], layer["attrs"]
    need(kwargs.get("weight_format") == fmt.name,
          f"init_kwargs weight_format {kwargs.get('weight_format')!r} disagrees with dtype {fmt.name!r}")
    unknown_kwargs = _unknown_init_kwargs(cls, kwargs)
    need(not unknown_kwargs, lambda: f"unknown init_kwargs key {unknown_kwargs[0]!r} for {cls.__name__} "
                                     f"(it takes {', '.join(_init_parameters(cls))})")
    check_kwargs = _kwargs_check(cls)
    if check_kwargs is not None:
        shape = list(check_kwargs(kwargs))
        need(shape == list(layer["shape"]), f"init_kwargs describe a weight of shape {shape}, the layer "
                                             f"{layer['shape']}")
    unknown = sorted(set(attrs) - set(cls.state_attrs))
    need(not unknown, lambda: f"unknown saved attribute {unknown[0]!r} for {cls.__name__}")
    saved_format = attrs.get("weight_format", fmt.name)
    need(saved_format == fmt.name, f"attrs weight_format {saved_format!r} disagrees with dtype {fmt.name!r}")
    symmetric = attrs.get("weight_symmetric", False)
    need(isinstance(symmetric, bool), f"weight_symmetric {symmetric!r} is not true or false")
    fmt.check_saved_scheme(layer, attrs, symmetric)
    group_size = attrs.get("weight_group_size")
    fmt.check_group_size(group_size, saved_attr=True)
    need(group_size == layer.get("group_size"),
          f"weight_group_size {group_size!r} disagrees with group_size {layer.get('group_size')!r}")
    orig = attrs.get("orig_dtype", "float32")
    need(_orig_dtype(orig) is not None, f"attrs orig_dtype {orig!r} is not one of {_ORIG_DTYPE_NAMES}")
    need(layer.get("orig_dtype") in (None, orig), f"attrs orig_dtype {orig!r} disagrees with orig_dtype "
                                                   f"{layer.get('orig_dtype')!r}")
    if "activations" in attrs:
        need(attrs["activations"] in ACTIVATION_MODES,
              f"activations {attrs['activations']!r} is not one of {ACTIVATION_MODES}")
    if "reduce_range" in attrs:  # absent from files written before it: False
        need(isinstance(attrs["reduce_range"], bool), f"reduce_range {attrs['reduce_range']!r} is not true or false")
        need(not attrs["reduce_range"] or getattr(fmt, "packs", False),
             f"reduce_range is set on a {fmt.name} layer: only int8 weights have dynamic int8 activations")
    if "_reversed_padding_repeated_twice" in attrs:
        _check_conv_padding(attrs["_reversed_padding_repeated_twice"], kwargs)
    return cls.__name__ not in _KWARGS


def _kwargs_check(cls) -> Optional[Callable[[Mapping], tuple]]:
    """The init_kwargs check of ``cls`` or of the built-in class it derives from, when it keeps
    that class's constructor (GPT-2's Conv1D as a Linear); None for a constructor of its own."""
    for base in cls.__mro__:
        check = _KWARGS.get(base.__name__)
        if check is not None:
            return check if _init_parameters(cls) == _init_parameters(base) else None
    return None


@functools.lru_cache(maxsize=None)
def _init_parameters(cls) -> tuple:
    """The keyword names cls(...) takes; None when it takes **kwargs (anything goes)."""
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.name != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL)


def _unknown_init_kwargs(cls, kwargs: Mapping) -> list:
    """A key the constructor doesn't take would fail only at the first forward, blaming the model."""
    known = _init_parameters(cls)
    return [] if known is None else sorted(k for k in kwargs if k not in known)


# a manifest kind -> the checks of a layer's own fields, returning whether the layer's module is
# a registered subclass (which may keep buffers of its own)
_FIELD_CHECKS: Dict[str, Callable[[Mapping, WeightFormat], bool]] = {
    "model": _check_model_fields, "state_dict": _check_state_dict_fields,
}


def _check_conv_padding(value, kwargs) -> None:
    """What nn.Conv2d derives from its padding (F.pad takes it for non-"zeros" padding modes)."""
    need(value is None or _int_list(value, 4, 0), f"_reversed_padding_repeated_twice {value!r} is not four ints >= 0")
    padding = kwargs.get("padding")
    if isinstance(padding, list) and value is not None:
        expected = [padding[1], padding[1], padding[0], padding[0]]
        need(value == expected, f"_reversed_padding_repeated_twice {value} disagrees with padding {padding}")


# ---- tensors -------------------------------------------------------------------------------------


def check_bias(bias: torch.Tensor, outputs: int, name: str) -> None:
    """Raise ``BadLayer`` unless ``bias`` (called ``name``) is a float vector of ``outputs``: a [1] or
    0-d one would broadcast over every output, an integer one keep its dtype."""
    need(bias.dtype in ORIG_DTYPES and list(bias.shape) == [outputs],
         f"{name} is {spec(bias)}, expected a float vector of the layer's {outputs} outputs")


def check_weight_tensors(fmt: WeightFormat, symmetric: bool, axis: Optional[int], group_size: Optional[int],
                         shape: tuple, tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise ``BadLayer`` when a layer's own tensors are not a valid weight of format ``fmt``
    and ``shape``: names, dtypes, sizes, scales (finite, > 0), zero-points (in range)."""
    unknown = set(tensors) - ALLOWED_LAYER_TENSORS
    need(not unknown, f"unexpected tensors {sorted(unknown)}")
    bias = tensors.get("bias")
    if bias is not None:
        check_bias(bias, shape[0], "bias")
    fmt.check_tensors(symmetric, axis, group_size, shape, tensors)
