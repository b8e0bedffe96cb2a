"""The registry of quantized modules, keyed by the float type they replace,
and the base class holding what every quantized module shares: the weight
storage (integer + scale/zero-point, or a plain fp16/bf16 tensor)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type

import torch
from torch import nn

from ..formats import FORMATS, WeightFormat, format_of, get_format
from ..formats.layer_cache import forget
from ..orig_dtype import check_orig_dtype, orig_dtype_of
from ..parametrized import GuardedParameters
from ..qtypes import QType, get_qtype
from ..packing import PACKED_BUFFERS, can_pack, pack_int8_linear
from ..tensor import QuantizedWeight
from .load_checks import check_loaded_weight
from .whole_load import already_checked
from ..no_torchscript import RefusesTorchScript
from ..torch_compat import TorchCompatMixin

__all__ = ["QuantizedModule", "register_qmodule", "register_qmodule_by_name", "qmodule_for", "QMODULES",
           "QMODULES_BY_NAME"]

QMODULES: Dict[Type[nn.Module], Type["QuantizedModule"]] = {}
# float types of optional packages (transformers' Conv1D), keyed "module.QualName" so that
# mono_quant never imports the package itself
QMODULES_BY_NAME: Dict[str, Type["QuantizedModule"]] = {}


def register_qmodule(float_type: Type[nn.Module]) -> Callable:
    """Class decorator: the decorated QuantizedModule subclass replaces exactly ``float_type``.

    :func:`~mono_quant.quantize` then swaps every module of that exact type
    (subclasses only when opted in by type through ``include=``), and
    :func:`~mono_quant.load` rebuilds the class by name from a file.

    Args:
        float_type: The float module type the class replaces.

    Returns:
        The decorator; it returns the class unchanged after registering it
        and setting ``cls.float_type``.

    Examples:
        >>> @mq.register_qmodule(MyLinear)
        ... class QuantizedMyLinear(mq.QuantizedLinear):
        ...     pass
    """

    def wrap(cls):
        QMODULES[float_type] = cls
        cls.float_type = float_type
        return cls

    return wrap


def register_qmodule_by_name(qualified_name: str) -> Callable:
    """Class decorator for a float type of an optional package, named
    ``"package.module.ClassName"``: matched by name, never imported here."""

    def wrap(cls):
        QMODULES_BY_NAME[qualified_name] = cls
        return cls

    return wrap


def qmodule_for(module: nn.Module) -> Optional[Type["QuantizedModule"]]:
    """The quantized class for this module's exact type (subclasses may have
    their own forward, or be read directly by a parent, so they don't match)."""
    cls = type(module)
    found = QMODULES.get(cls)
    if found is None and QMODULES_BY_NAME:
        found = QMODULES_BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
    return found


class QuantizedModule(RefusesTorchScript, TorchCompatMixin, nn.Module):
    """Base class of every quantized layer: shared storage and bookkeeping;
    subclasses say how to build from the float module (``from_float``) and how
    to run forward.

    Integer formats keep ``weight_qdata`` / ``weight_scale`` /
    ``weight_zero_point`` buffers, float formats a ``weight`` buffer in that
    dtype, so ``state_dict()``, ``.to()`` and ``copy.deepcopy`` just work.
    ``weight_format`` names the format; ``float_type`` is the float module
    type a class replaces (see :func:`~mono_quant.register_qmodule`).

    Args:
        weight_format: "int8", "uint8", "int4", "fp16" or "bf16".
        weight_shape: The float weight's shape (as the module stores it).
        orig_dtype: The dtype the weight stands for (``.weight``'s dtype): float32, float16,
            bfloat16 or float64 (a dtype or its name); ConfigError for another.

    Examples:
        >>> qmodel, _ = mq.quantize(model)
        >>> [n for n, m in qmodel.named_modules() if isinstance(m, mq.QuantizedModule)]
    """

    float_type: Type[nn.Module] = nn.Module
    # Plain attributes (JSON-able, or torch dtypes) that, with init_kwargs()
    # and the tensors of state_dict(), fully describe a module: what save/load
    # persists.  Subclasses extend the tuple when they add such attributes.
    state_attrs: Tuple[str, ...] = ("weight_format", "weight_axis", "weight_symmetric", "orig_dtype",
                                    "weight_group_size")

    def __init__(self, weight_format: str, weight_shape, orig_dtype=torch.float32):
        super().__init__()
        self.__dict__["_parameters"] = GuardedParameters()  # (spectral_norm reads it past .weight)
        self.weight_format = get_qtype(weight_format).name
        self.weight_shape = tuple(weight_shape)
        self.weight_axis: Optional[int] = 0
        self.weight_symmetric = False
        self.weight_group_size: Optional[int] = None  # int4: columns per group (None: per channel)
        self.orig_dtype = check_orig_dtype(orig_dtype)
        self.register_load_state_dict_post_hook(forget)  # derived copies go stale on a load: see forget

    @property
    def qtype(self) -> QType:
        return get_qtype(self.weight_format)

    @property
    def format(self) -> WeightFormat:
        """The weight format's object (:mod:`mono_quant.formats`): what this module asks
        about its weight's storage, dequantization and forward."""
        fmt = FORMATS.get(self.weight_format)  # the canonical name: every forward comes here
        return fmt if fmt is not None else get_format(self.weight_format)

    # -- weight storage ------------------------------------------------------
    def set_weight(self, weight) -> None:
        """Store a QuantizedWeight (integer formats) or a cast tensor (float formats).

        On a layer that has a weight (``layer.set_weight(mq.quantize_weight(w, ...))``) the new one
        must be of the layer's format and float shape; the packed copy the kernels read and every
        copy derived from the old weight are remade (the kernels went on reading the old packed
        codes with the new scales: outputs of neither weight)."""
        buffers = self._buffers
        if not any(buffers.get(n) is not None for n in self.format.weight_buffers + PACKED_BUFFERS):
            self.format.set_weight(self, weight)  # a layer being built (from_float)
            return
        weight = self._replacement_weight(weight)
        device = next(buffers[n].device for n in self.format.weight_buffers + PACKED_BUFFERS
                      if buffers.get(n) is not None)
        if device.type != "meta" and getattr(weight, "qdata", weight).device != device:
            # where the layer is, as load_state_dict copies into place (a CPU weight on a GPU layer left
            # it split: dequantized on the CPU and copied over on every call, or NumPy's TypeError)
            weight = weight.to(device)
        packed = buffers.get("weight_packed") is not None
        for name in PACKED_BUFFERS:
            buffers.pop(name, None)
        self.format.set_weight(self, weight)
        if packed and can_pack(weight):
            self.set_packed(pack_int8_linear(weight, groups=getattr(self, "groups", 1)))
        forget(self)

    def _replacement_weight(self, weight):
        """``weight`` checked against the layer (format, shape) and in the layer's stored shape."""
        where = f"{type(self).__name__}.set_weight"
        if not isinstance(weight, (QuantizedWeight, torch.Tensor)):
            raise TypeError(f"{where} takes what mono_quant.quantize_weight returns (or, for fp16 / bf16 layers, "
                            f"a tensor of that dtype), got {type(weight).__name__}")
        try:
            name = format_of(weight).name
        except (KeyError, ValueError, TypeError):
            name = str(weight.dtype).replace("torch.", "")
        if name != self.weight_format:
            raise ValueError(f"{where}: the layer stores {self.weight_format}, the weight is {name}: pass "
                             f"mono_quant.quantize_weight(w, dtype={self.weight_format!r}), or quantize the float "
                             f"layer again for another format")
        stored = self._as_stored_shape(weight)
        if tuple(stored.shape) != tuple(self.weight_shape):
            shown = tuple(self.weight.shape)  # (GPT-2's Conv1D shows the float [in, out], stores [out, in])
            raise ValueError(f"{where}: a weight of shape {tuple(weight.shape)}, the layer stores "
                             f"{tuple(self.weight_shape)}" + ("" if shown == tuple(self.weight_shape) or len(shown) != 2
                                                              else f" (the Linear it runs as; .weight shows the float "
                                                                   f"layer's {shown}: quantize its transpose)"))
        return stored

    def _as_stored_shape(self, weight):
        """``weight`` in the shape the layer stores (Conv1d: a conv2d's, with a height of 1)."""
        return weight

    def set_packed(self, buffers: Mapping[str, torch.Tensor]) -> None:
        """Keep the kernels' packed copy of the int8 weight *instead of*
        ``weight_qdata``: one copy of the weight, in memory and on disk; the
        plain layout is recovered by unpacking when needed."""
        for name, tensor in buffers.items():
            self.register_buffer(name, tensor)
        self._buffers.pop("weight_qdata", None)

    def int_weight(self) -> torch.Tensor:
        """The integer weight in its original shape: ``weight_qdata``, or unpacked from the packed copy
        (affine int8 / uint8 formats)."""
        return self.format.int_weight(self)

    def quantized_weight(self) -> QuantizedWeight:
        """The integer weight as a QuantizedWeight (integer formats only)."""
        return self.format.module_weight(self)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as a float tensor of the original shape."""
        return self.format.dequantize(self, dtype)

    @staticmethod
    def as_float_layout(weight: torch.Tensor) -> torch.Tensor:
        """A float weight of this class's stored layout in the float layer's (what its state_dict
        holds): the same here; a class that stores it otherwise says how (QuantizedConv1d's
        height-1 view, GPT-2 Conv1D's ``[out, in]``)."""
        return weight

    def weight_nbytes(self) -> int:
        """Bytes the stored weight really takes (data, scales, zero-points)."""
        return self.format.weight_nbytes(self)

    def _set_bias(self, bias: Optional[torch.Tensor]) -> None:
        # a copy: the caller's bias must never be shared with (or changed through) the quantized model
        # a Parameter (frozen, as the weight: requires_grad_() opts in), so parameters() lists it
        # in the dtype the weight stands for when that differs (a float8 bias: float32, as orig_dtype)
        self.bias = None if bias is None else nn.Parameter(
            bias.detach().to(orig_dtype_of(bias.dtype) if bias.is_floating_point() else bias.dtype, copy=True),
            requires_grad=False)

    @classmethod
    def from_float(cls, module: nn.Module, weight) -> "QuantizedModule":
        """Build from the float module and its already quantized (or cast) weight."""
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # a state_dict is untrusted input like a file: its weight tensors pass mq.load's checks first
        # (once: the model's root checked every layer before any was copied, whole_load.py)
        if not already_checked(self, state_dict, prefix):
            check_loaded_weight(self, state_dict, prefix, local_metadata.get("assign_to_params_buffers", False))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # -- persistence protocol (used by save / load) ---------------------------
    def init_kwargs(self) -> Dict[str, Any]:
        """JSON-able constructor arguments: ``type(self)(**init_kwargs())`` makes
        an empty module of the same shape and options."""
        raise NotImplementedError

    def get_state_attrs(self) -> Dict[str, Any]:
        """The ``state_attrs`` as JSON-able values (torch dtypes as their names)."""
        out = {}
        for name in self.state_attrs:
            value = getattr(self, name)
            out[name] = str(value).replace("torch.", "") if isinstance(value, torch.dtype) else value
        return out

    @classmethod
    def from_saved(cls, init_kwargs: Mapping[str, Any], attrs: Mapping[str, Any],
                   tensors: Mapping[str, torch.Tensor]) -> "QuantizedModule":
        """Rebuild a module from what save() wrote: constructor arguments, state
        attributes and its own (non-recursive) state_dict tensors, which are
        registered as-is (no copy).  Raises ValueError on anything inconsistent."""
        module = cls(**init_kwargs)
        for name, value in attrs.items():
            if name not in cls.state_attrs:
                raise ValueError(f"{cls.__name__}: unknown saved attribute {name!r}")
            if name == "orig_dtype":
                value = check_orig_dtype(value, f"{cls.__name__}: saved orig_dtype")
            setattr(module, name, value)
        module.weight_format = get_qtype(module.weight_format).name  # validated, and canonical (forward tests it)
        for name, tensor in tensors.items():
            if "." in name:
                raise ValueError(f"{cls.__name__}: saved tensor {name!r} belongs to a child module")
            if name != "bias":
                module.register_buffer(name, tensor)
        bias = tensors.get("bias")  # as-is, a frozen Parameter (see _set_bias)
        module.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        return module

    def extra_repr(self) -> str:
        scheme = self.format.describe(self)
        return f"weight={self.weight_format}{list(self.weight_shape)}{scheme}, bias={self.bias is not None}"
