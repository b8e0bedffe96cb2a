"""QuantizedComposite: the base of the quantized modules that replace a float module
holding *several* weight matrices (nn.LSTM, nn.GRU, nn.MultiheadAttention).

Such a module keeps one QuantizedLinear child per weight matrix (``ih_l0``, ``hh_l0``,
``in_proj``, ``out_proj``...) and runs its own math (the recurrence, the attention) in
torch around them.  So each weight is stored, packed, validated at load and run exactly
as a QuantizedLinear's (every format and activation mode), and whatever QuantizedLinear
gains later (custom ops, autograd, ``.weight``) the composite gets through its children.

The composite itself is no QuantizedModule: ``save`` records its children as ordinary
layers (``lstm.ih_l0``...), and ``load(path, model=skeleton)`` rebuilds it from the
skeleton's float module (its configuration: sizes, flags) with :meth:`shell` and puts the
loaded children in it.  Its only tensors of its own are the float module's small float
parameters that are no weight matrix (:meth:`float_parameters`: MultiheadAttention's
``bias_k`` / ``bias_v``), kept float under their float names, so they are saved and
loaded as any float parameter of a model.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..no_torchscript import RefusesTorchScript

__all__ = ["QuantizedComposite", "ChildSpec", "is_composite"]

#: one weight matrix of a float composite: (child name, weight [out, in], bias or None)
ChildSpec = Tuple[str, torch.Tensor, Optional[torch.Tensor]]


def is_composite(cls) -> bool:
    """Whether a quantized class (from the registry) is a :class:`QuantizedComposite`."""
    return isinstance(cls, type) and issubclass(cls, QuantizedComposite)


class QuantizedComposite(RefusesTorchScript, nn.Module):
    """Subclasses define ``_configure(float_module)`` (copy the float module's
    configuration onto ``self``), :meth:`child_specs` and ``forward``."""

    float_type = nn.Module
    torchscript_alternatives = "torch.compile or torch.export.export"

    def __init__(self, float_module: nn.Module):
        super().__init__()
        self._configure(float_module)

    def _configure(self, float_module: nn.Module) -> None:
        raise NotImplementedError

    @classmethod
    def child_specs(cls, module: nn.Module) -> List[ChildSpec]:
        """The weight matrices of the float ``module`` to quantize, as Linear weights ``[out, in]``."""
        raise NotImplementedError

    @classmethod
    def float_parameters(cls, module: nn.Module) -> Mapping[str, Optional[torch.Tensor]]:
        """The float module's parameters kept float beside the quantized children (name ->
        parameter or None); none by default."""
        return {}

    @classmethod
    def skip_reason(cls, module: nn.Module) -> Optional[str]:
        """Why this float module stays float (an option the quantized class does not
        implement), or None."""
        for _, w, _ in cls.child_specs(module):
            if w.device.type == "meta":
                return "weight is on the meta device (no data to quantize)"
            if not w.is_floating_point():
                return f"weight dtype {w.dtype} is not floating point"
        return None

    @classmethod
    def from_float(cls, module: nn.Module, children: Dict[str, nn.Module]) -> "QuantizedComposite":
        """The quantized module of ``module`` with its quantized children (by child name)."""
        q = cls(module)
        expected = [name for name, _, _ in cls.child_specs(module)]
        if sorted(children) != sorted(expected):
            raise ValueError(f"{cls.__name__}: children {sorted(children)}, expected {sorted(expected)}")
        for name in expected:
            q.add_module(name, children[name])
        for name, p in cls.float_parameters(module).items():
            # a copy (the caller's model is never shared), frozen as the children's biases are
            q.register_parameter(name, None if p is None else nn.Parameter(p.detach().clone(), requires_grad=False))
        q.train(module.training)
        return q

    @classmethod
    def shell(cls, module: nn.Module) -> "QuantizedComposite":
        """The module of ``module``'s configuration with a meta-device nn.Linear placeholder
        per child and a meta parameter per float parameter: what ``load`` fills with the
        file's quantized children and float tensors."""
        q = cls(module)
        for name, w, b in cls.child_specs(module):
            placeholder = nn.Linear(int(w.shape[1]), int(w.shape[0]), bias=b is not None, device="meta")
            q.add_module(name, placeholder)
        for name, p in cls.float_parameters(module).items():
            q.register_parameter(name, None if p is None else nn.Parameter(
                torch.empty(p.shape, dtype=p.dtype, device="meta"), requires_grad=False))
        q.train(module.training)
        return q

    def child_names(self) -> List[str]:
        return list(self._modules)
