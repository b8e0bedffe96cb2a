"""What makes a quantized module behave like the float module it replaced, for code
that inspects it: a ``.weight`` of the float weight's shape, dtype and device, and
``.to(dtype)`` / ``.half()`` / ``.bfloat16()`` that change the compute dtype without
touching the stored format.

``.weight`` of an integer-format module is a :class:`DequantizedWeightView`: a
``torch.Tensor`` subclass holding no data, whose metadata (``shape``, ``dtype``,
``device``, ``size()``, ``dim()``, ...) costs nothing and whose every other use
dequantizes the module's current weight (``module.dequantized_weight``) and runs on
that.  Code that only reads ``.weight.dtype`` (T5) pays nothing; code that computes
with it (``F.linear(x, layer.weight)``, ``nn.MultiheadAttention`` on a quantized
``out_proj``) gets the right numbers at the cost of one dequantization.  Fast paths
that test for tensor subclasses (``nn.TransformerEncoderLayer``,
``nn.MultiheadAttention``) see one and take their regular path, which calls the
quantized modules.  Float formats (fp16/bf16) get the same view (of ``orig_dtype``)
over their stored ``weight`` buffer, which ``state_dict()`` keeps as before.
"""
from __future__ import annotations

import weakref
from sys import _getframe

import torch
from torch.utils._pytree import tree_map

from .formats.traced_forward import dequantized_weight
from .weight_view_writes import refuse_dispatch_writes, refuse_writes
from .orig_dtype import check_orig_dtype
from .parametrized import refuse_reparametrizing, refuse_weight_parametrization
from .torch_features import is_exporting

__all__ = ["DequantizedWeightView", "TorchCompatMixin", "weight_replaced_message", "weight_view"]

# Tensor methods answered from the view's metadata, without dequantizing
_METADATA_METHODS = frozenset({
    torch.Tensor.size, torch.Tensor.dim, torch.Tensor.ndimension, torch.Tensor.numel, torch.Tensor.nelement,
    torch.Tensor.element_size, torch.Tensor.is_floating_point, torch.Tensor.is_complex, torch.Tensor.get_device,
    torch.Tensor.__len__, torch.Tensor.is_contiguous, torch.Tensor.stride,
})

# aliases of the view's (absent) storage: the view itself (a write through one would be lost)
_ALIASES = frozenset({torch.Tensor.detach, torch.detach})


class DequantizedWeightView(torch.Tensor):
    """The float weight of a quantized module, dequantized on use (see the module docstring).

    ``requires_grad`` is False: quantized weights are frozen.  Raises RuntimeError if
    used after its module was garbage-collected.
    """

    @staticmethod
    def __new__(cls, module, dtype: torch.dtype, device: torch.device):
        view = torch.Tensor._make_wrapper_subclass(cls, _view_shape(module), dtype=dtype, device=device,
                                                   requires_grad=False)
        view._module = weakref.ref(module)
        return view

    def dequantize(self) -> torch.Tensor:
        """The module's weight as a plain float tensor of this view's dtype."""
        module = self._module()
        if module is None:
            raise RuntimeError("the quantized module this weight view belongs to no longer exists")
        with torch.no_grad():
            if not module.format.integer:  # fp16 / bf16: the stored weight, cast
                return _as_view_layout(module, module._buffers["weight"].to(self.dtype))
            exporting = is_exporting()
            if exporting or any(type(b) is not torch.Tensor for b in module._buffers.values() if b is not None):
                # non-strict export, make_fx: fake buffers, which the C kernels can't read; the ops can
                return _as_view_layout(module, dequantized_weight(module, torch.float32).to(self.dtype))
            return _as_view_layout(module, module.dequantized_weight(torch.float32).to(self.dtype))

    def __repr__(self, *, tensor_contents=None) -> str:
        return f"DequantizedWeightView(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if func in _ALIASES or (name == "__get__" and getattr(getattr(func, "__self__", None), "__name__", None)
                                == "data"):
            return args[0]  # .data / .detach(): the view itself, so a write through it is refused (writes.py)
        if func in _METADATA_METHODS or name == "__get__":  # shape, dtype, device, ...
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        refuse_writes(func, args, kwargs)
        args, kwargs = tree_map(_plain, (args, kwargs))
        return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # reached only below torch_function
        refuse_dispatch_writes(func, args, kwargs or {})  # (Tensor.set_ comes here only)
        args, kwargs = tree_map(_plain, (args, kwargs or {}))
        return func(*args, **kwargs)


class _TracedWeight(torch.Tensor):
    """``.weight`` inside a torch.compile graph: the dequantized tensor, marked as a
    subclass only so that fast paths testing ``has_torch_function`` (nn.TransformerEncoderLayer)
    fall back to calling the quantized modules, as they do in eager."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def _view_shape(module) -> tuple:
    """The float layer's weight shape: a QuantizedConv1d stores its ``[out, in, k]`` weight as
    the height-1 ``[out, in, 1, k]`` and shows the 3-D one, GPT-2's Conv1D its ``[out, in]`` as the
    float ``[in, out]`` (classes stored in another layout say so with ``view_is_float_layout``)."""
    if getattr(module, "view_is_float_layout", False):
        return tuple(module.float_weight_shape(list(module.weight_shape)))
    return tuple(module.weight_shape)


def _as_view_layout(module, weight: torch.Tensor) -> torch.Tensor:
    """A dequantized stored-layout weight as ``.weight`` shows it (_view_shape)."""
    if getattr(module, "view_is_float_layout", False):
        return type(module).as_float_layout(weight)
    return weight.reshape(_view_shape(module))


def _plain(value):
    return value.dequantize() if isinstance(value, DequantizedWeightView) else value


# one view per module, rebuilt when its dtype or device changes (a weak map: deepcopy and
# state_dict never see it, and the view's weak reference keeps no module alive)
_VIEWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def weight_view(module) -> DequantizedWeightView:
    stored = module._buffers.get("weight_scale", module._buffers.get("weight"))
    device = stored.device if stored is not None else torch.device("cpu")
    view = _VIEWS.get(module)
    if view is None or view.dtype != module.orig_dtype or view.device != device:
        view = DequantizedWeightView(module, module.orig_dtype, device)
        _VIEWS[module] = view
    return view


class TorchCompatMixin:
    """Mixed into QuantizedModule (before nn.Module): ``.weight`` and dtype conversions."""

    @property
    def weight(self):
        """The float weight this module replaced, as a DequantizedWeightView (see the module docstring)."""
        buffers = self.__dict__.get("_buffers", {})
        if "weight" not in buffers and "weight_scale" not in buffers:  # not stored yet (or no weight at all)
            raise AttributeError(f"'{type(self).__name__}' object has no attribute 'weight'")
        if torch.compiler.is_dynamo_compiling():  # dynamo can't build the view: the dequantized tensor, traced

            return _as_view_layout(self, dequantized_weight(self, self.orig_dtype)).as_subclass(_TracedWeight)
        # weight_norm, prune, parametrize read it here first: fail before any change (one file name: ~0.1 us a read)
        refuse_reparametrizing(self, _getframe(1).f_code.co_filename)
        return weight_view(self)

    @property
    def parametrizations(self):
        """torch.nn.utils.parametrize's ModuleDict once one is registered (on the bias); asked for
        first by ``register_parametrization``, which is refused here for the weight."""
        found = self.__dict__.get("_modules", {}).get("parametrizations")
        if found is not None:
            return found
        refuse_weight_parametrization(self)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute 'parametrizations'")

    def __setattr__(self, name, value):
        # nn.Module's own path for a Parameter dropped an fp16 layer's weight buffer, then raised KeyError
        buffers = self.__dict__.get("_buffers", {})
        if name == "weight" and ("weight" in buffers or "weight_scale" in buffers):
            stored = buffers.get("weight")
            # (a plain tensor of the stored buffer's dtype and shape replaces it, as nn.Module does: the
            # Hugging Face loader fills an fp16 layer so)
            if not (isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter)
                    and stored is not None and value.dtype == stored.dtype and value.shape == stored.shape):
                raise AttributeError(weight_replaced_message(self, f"layer.weight = <{type(value).__name__}>"))
        super().__setattr__(name, value)

    def __delattr__(self, name):
        if name == "weight" and ("weight" in self._buffers or "weight_scale" in self._buffers):
            raise AttributeError(weight_replaced_message(self, "del layer.weight"))
        super().__delattr__(name)

    def _apply(self, fn, recurse=True):
        """``.to(device)`` moves every buffer; a dtype conversion (``.to(torch.bfloat16)``,
        ``.half()``, ``.float()``, ``.double()``, ``.type(torch.float64)``) leaves the stored
        format's buffers (integer codes, scales, zero-points, fp16/bf16 weights) in their
        dtypes and changes the compute dtype instead: the bias and ``orig_dtype`` (the dtype
        of ``.weight`` and of an embedding's output) follow, and outputs keep following the
        input's dtype.  Only to a dtype a weight may stand for (``orig_dtype.ORIG_DTYPES``):
        ConfigError for float8 or an integer dtype (``.type(torch.int8)``).  (Cast as other
        buffers are, an int4 layer's fp16 scales would be read back as fp16 bits
        of bf16 values: garbage.)"""
        # every stored buffer: .type(dtype) (Module.type) casts integer ones too, which turned the int8 codes,
        # packed weights and their int32 layout into float64 (the packed layout then unreadable)
        stored = {name: t for name, t in self._buffers.items() if t is not None}
        cast_to = _conversion_dtype(fn)
        if cast_to is not None:  # before any tensor moves: a refused conversion leaves the module as it was
            check_orig_dtype(cast_to, f"{type(self).__name__}: the conversion's dtype",
                             "; convert to one of those (float8 has no matmul or conv on the CPU; an integer or "
                             "complex dtype none at all)")
        result = super()._apply(fn, recurse)
        for name, old in stored.items():
            new = self._buffers.get(name)
            if new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        if cast_to is not None:
            self.orig_dtype = cast_to
        return result


def weight_replaced_message(module, what: str) -> str:
    """Why ``what`` (an assignment to / deletion of ``.weight``) is refused on a quantized ``module``."""
    return (f"{what} on {type(module).__name__} ({module.weight_format}): a quantized layer's weight is its "
            f"stored format (integer codes and scales, or a 16-bit buffer), and .weight a read-only view of it.  "
            f"Give it a new weight with layer.set_weight(mono_quant.quantize_weight(w, ...)), or change the float "
            f"model and quantize it again")


def _conversion_dtype(fn):
    """The dtype ``fn`` (what Module._apply applies to each tensor) converts floating-point
    tensors to, or None when it keeps their dtype (a device move, ...)."""
    try:
        to32, to16 = fn(torch.empty(0)), fn(torch.empty(0, dtype=torch.float16))
    except Exception:  # a conversion that can't take an empty CPU probe: assume no dtype change
        return None
    if not isinstance(to32, torch.Tensor) or not isinstance(to16, torch.Tensor):
        return None
    if to32.dtype == torch.float32 and to16.dtype == torch.float16:
        return None
    return to32.dtype  # (an integer or complex one too: .type(torch.int8) is refused, not half applied)
