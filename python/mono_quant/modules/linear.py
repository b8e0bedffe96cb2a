"""QuantizedLinear: replaces nn.Linear."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..int4 import int4_linear
from .registry import QuantizedModule, register_qmodule

__all__ = ["QuantizedLinear"]


@register_qmodule(nn.Linear)
class QuantizedLinear(QuantizedModule):
    """``y = x @ W.T + b`` with W stored as int8 (+ per-channel scale and
    zero-point) or fp16/bf16.  Takes inputs of any leading shape and floating
    dtype and returns the input's dtype; math runs in float32 for integer
    weights, in the input's dtype for float ones."""

    def __init__(self, in_features: int, out_features: int, weight_format: str = "int8",
                 orig_dtype: torch.dtype = torch.float32):
        super().__init__(weight_format, (out_features, in_features), orig_dtype)
        self.in_features = in_features
        self.out_features = out_features

    def init_kwargs(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "weight_format": self.weight_format}

    @classmethod
    def from_float(cls, module: nn.Linear, weight) -> "QuantizedLinear":
        q = cls(module.in_features, module.out_features, weight_format=_format_of(weight),
                orig_dtype=module.weight.dtype)
        q.set_weight(weight)
        q._set_bias(module.bias)
        q.train(module.training)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_format == "int4":  # packed weight streamed by the C kernels
            return int4_linear(x, self.quantized_weight(), self.bias)
        if self.qtype.kind == "int":
            w = self.dequantized_weight(torch.float32).to(x.device)
            b = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), w, b).to(x.dtype)
        w = self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, b)


def _format_of(weight) -> str:
    from ..tensor import QuantizedWeight

    if isinstance(weight, QuantizedWeight):
        return weight.dtype
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}[weight.dtype]
