"""A quantized layer's ``.weight`` view is read-only: a write into it (``nn.init.zeros_(layer.weight)``,
``layer.weight.mul_(2)``, ``layer.weight[0] = 0``, ``torch.add(a, b, out=layer.weight)``,
``layer.weight.data.copy_(w)``, ``layer.weight.data = w``, ``layer.weight.set_(w)``,
``layer.weight.detach().zero_()``) went into a dequantized temporary and was lost without a word;
``layer.weight.requires_grad_(True)`` made a gradient that no optimizer step could apply.  Refuse
them, naming the layer and saying what to do.  (``.data`` and ``.detach()`` of the view are the
view again, so that writes through them are seen here; every read still dequantizes.)"""
from __future__ import annotations

import torch

__all__ = ["refuse_dispatch_writes", "refuse_writes", "write_error"]


# in-place by name, but no write into the values (a frozen-weights loop calls requires_grad_(False))
_NOT_WRITES = frozenset({"requires_grad_", "detach_", "share_memory_"})
# attributes of the view whose assignment would be lost (``.grad`` is left alone: optimizers set it to None)
_REFUSED_SETS = frozenset({"data", "requires_grad"})


def _in_place(func) -> bool:
    name = getattr(func, "__name__", "")
    return name == "__setitem__" or (name.endswith("_") and not name.endswith("__") and name not in _NOT_WRITES)


def _label(view) -> str:
    module = view._module()
    if module is None:
        return "a quantized layer's .weight"
    return (f"the .weight of {type(module).__name__} ({getattr(module, 'weight_format', '?')}, "
            f"{list(view.shape)})")


def write_error(view, what: str) -> RuntimeError:
    """The error for ``what`` (an operation) writing into ``view``."""
    return RuntimeError(
        f"{what} would write into {_label(view)}, a read-only view dequantized on use (the write would be lost): "
        f"change the float model and quantize it again, or give the layer a new weight with "
        f"layer.set_weight(mono_quant.quantize_weight(...))")


def _grad_error(view) -> RuntimeError:
    return RuntimeError(
        f"requires_grad=True on {_label(view)}: a quantized weight is frozen (its integer codes take no "
        f"gradient, and the view is dequantized anew at each use, so an optimizer step on it would be lost).  "
        f"To train, fine-tune the float model and quantize it again, or train float adapters beside the "
        f"quantized layers (mono_quant.integrations.peft); gradients to the input work as they are")


def refuse_writes(func, args, kwargs) -> None:
    """RuntimeError when ``func`` (as ``__torch_function__`` sees it) would write into a weight view
    among ``args`` / ``kwargs``, set its ``.data`` or turn on its ``requires_grad``."""
    from .torch_compat import DequantizedWeightView  # (torch_compat imports this module)

    name = getattr(func, "__name__", "")
    first = args[0] if args else None
    if isinstance(first, DequantizedWeightView):
        if name == "requires_grad_":
            if (args[1] if len(args) > 1 else kwargs.get("requires_grad", True)):
                raise _grad_error(first)
            return
        if name == "__set__":  # a property of the tensor assigned: func is the getset descriptor's __set__
            attribute = getattr(getattr(func, "__self__", None), "__name__", "")
            if attribute == "requires_grad" and len(args) > 1 and args[1]:
                raise _grad_error(first)
            if attribute == "data":
                raise write_error(first, ".data =")
            return
    out = kwargs.get("out")
    outs = out if isinstance(out, (tuple, list)) else (out,)
    written = (first if _in_place(func) else None,) + tuple(outs)
    for t in written:
        if isinstance(t, DequantizedWeightView):
            raise write_error(t, name or str(func))


def refuse_dispatch_writes(func, args, kwargs) -> None:
    """The same below ``__torch_function__`` (``Tensor.set_`` reaches only ``__torch_dispatch__``):
    RuntimeError when the aten op ``func`` mutates a weight view among its arguments."""
    from .torch_compat import DequantizedWeightView

    schema = getattr(func, "_schema", None)
    if schema is None or not schema.is_mutable:
        return
    for argument, value in zip(schema.arguments, list(args) + [kwargs.get(a.name) for a in
                                                                 schema.arguments[len(args):]]):
        info = argument.alias_info
        if info is not None and info.is_write and isinstance(value, DequantizedWeightView):
            raise write_error(value, str(getattr(func, "__name__", func)).split(".")[0])
