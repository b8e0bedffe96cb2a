"""One manifest layer of a file back to what it stood for: a saved module rebuilt
(kind "model"), a state_dict layer's stored weight (asking its format object), a packed
int8 Linear taken as it is, or the layer's float weight (:func:`dequantize_layer`)."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..formats import FORMATS, get_format
from ..modules import QuantizedLinear
from ..packing import PACKED_BUFFERS, check_packed_int8, check_packed_module
from ..tensor import QuantizedWeight
from .dtypes import dtype_from_name
from .errors import CheckpointError
from .manifest import quantized_class
from .validate import check_layer

__all__ = ["check_weight_shape", "rebuild_saved", "packed_int8_layer", "packed_linear", "stored_weight",
           "dequantize_layer", "is_uninitialized", "float_weight_shape"]


def is_uninitialized(t) -> bool:
    """A lazy module's parameter that has no shape yet."""
    return isinstance(t, nn.parameter.UninitializedTensorMixin)


def check_weight_shape(layer, float_module: nn.Module, name: str, float_shape=None) -> None:
    # float_shape: the float layer's weight shape for a quantized class that stores it otherwise (GPT-2 Conv1D)
    expected = layer["shape"] if float_shape is None else float_shape(layer["shape"])
    weight = getattr(float_module, "weight", None)
    if isinstance(weight, torch.Tensor) and not is_uninitialized(weight) and list(weight.shape) != expected:
        raise CheckpointError(f"layer {name!r} has weight shape {list(weight.shape)} in the model, "
                              f"{expected} in the checkpoint")


def rebuild_saved(layer, own: Dict[str, torch.Tensor]) -> nn.Module:
    cls = quantized_class(layer["class"])
    try:
        module = cls.from_saved(layer["init_kwargs"], layer["attrs"], own)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"layer {layer['name'] or '<root>'!r}: cannot rebuild {cls.__name__}: {exc}") from exc
    if "weight_packed" in own:  # the kernels will trust these: check them once, here
        problem = check_packed_module(module)
        if problem:
            raise CheckpointError(f"layer {layer['name'] or '<root>'!r}: bad packed int8 weight: {problem}")
    return module


def packed_int8_layer(layer, own: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state_dict-kind layer holds packed int8 buffers a QuantizedLinear can use as they are."""
    fmt = FORMATS.get(layer.get("dtype"))
    return fmt is not None and fmt.takes_packed_file_layer(layer, own)


def packed_linear(layer, own: Dict[str, torch.Tensor], float_module: nn.Module, name: str,
                  cls=QuantizedLinear) -> nn.Module:
    """A packed per-channel int8 Linear of a state_dict-kind file, its buffers checked
    (:func:`check_packed_int8`) and used as they are: what from_float would rebuild."""
    n, _ = layer["shape"]
    scale, zero_point = own.get("weight_scale"), own.get("weight_zero_point")
    if (scale is None or zero_point is None or scale.dtype != torch.float32 or zero_point.dtype != torch.int32
            or scale.numel() != n or zero_point.numel() != n):
        raise CheckpointError(f"layer {name!r}: an int8 layer needs float32 weight_scale and int32 "
                              f"weight_zero_point of {n} channels")
    problem = check_packed_int8(own["weight_packed"], own["weight_colsum"], own["weight_packed_info"], layer["shape"])
    if problem:
        raise CheckpointError(f"layer {name!r}: bad packed int8 weight: {problem}")
    return cls.from_packed_int8(float_module, scale.reshape(n), zero_point.reshape(n),
                                {b: own[b] for b in PACKED_BUFFERS}, layer["scheme"] == "symmetric")


def stored_weight(layer, own: Dict[str, torch.Tensor], orig_dtype: torch.dtype):
    """The weight of a state_dict-kind layer as quantize() made it: a QuantizedWeight
    (integer formats, from ``weight_qdata`` or the packed copy, ``weight_scale``, ``weight_zero_point``)
    or the cast tensor (``weight``).  The inverse of quantize_state_dict_entry."""
    name = layer["name"] or "<root>"
    try:
        fmt = get_format(layer["dtype"])
    except ValueError as exc:
        raise CheckpointError(f"layer {name!r}: {exc}") from None
    return fmt.stored_weight(layer, own, orig_dtype, name)


def dequantize_layer(kind: str, layer: Mapping[str, Any], own: Dict[str, torch.Tensor],
                     dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(float weight, bias or None) of one manifest layer from its own tensors; the weight
    in ``dtype``, default its original dtype (float32 when unknown).  Raises CheckpointError
    for a layer whose fields or tensors are invalid (see :func:`.validate.check_layer`)."""
    check_layer(kind, layer, own)
    orig = dtype_from_name(layer["orig_dtype"]) if layer.get("orig_dtype") else torch.float32
    target = dtype or orig
    return _DEQUANTIZE[kind](layer, own, orig, target)


def _saved_layer_weight(layer, own, orig: torch.dtype, target: torch.dtype):
    module = rebuild_saved(layer, own)  # (in the float layer's layout: a Conv1d's 3-D, GPT-2 Conv1D's [in, out])
    return type(module).as_float_layout(module.dequantized_weight(target)), own.get("bias")


def _transposed(layer) -> bool:
    """Whether a state_dict layer's float weight is the transpose of the one quantized (GPT-2's Conv1D)."""
    return layer.get("type") == "Conv1D"


def _state_dict_layer_weight(layer, own, orig: torch.dtype, target: torch.dtype):
    stored = stored_weight(layer, own, orig)
    weight = stored.dequantize(target) if isinstance(stored, QuantizedWeight) else stored.to(target)
    if _transposed(layer):  # GPT-2's Conv1D was quantized as [out, in]: back to its [in, out]
        weight = weight.t().contiguous()
    return weight, None  # a state_dict layer's bias is a separate entry


def float_weight_shape(kind: str, layer: Mapping[str, Any]) -> List[int]:
    """The shape of the float weight :func:`dequantize_layer` gives for a (checked) manifest
    layer: the float layer's, where its quantized class stores another (a Conv1d's height-1
    view, GPT-2 Conv1D's ``[out, in]``)."""
    shape = list(layer["shape"])
    if kind == "state_dict":
        return shape[::-1] if _transposed(layer) and len(shape) == 2 else shape
    to_float = getattr(quantized_class(layer["class"]), "float_weight_shape", None)
    return list(to_float(shape)) if to_float is not None else shape


# manifest kind -> (float weight, bias) of one of its layers
_DEQUANTIZE = {"model": _saved_layer_weight, "state_dict": _state_dict_layer_weight}
