"""QuantizedConv2d: replaces nn.Conv2d (any stride, padding, dilation, groups, padding mode)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import _format_of
from .registry import QuantizedModule, register_qmodule

__all__ = ["QuantizedConv2d"]


@register_qmodule(nn.Conv2d)
class QuantizedConv2d(QuantizedModule):
    """A Conv2d whose weight is int8 per output channel, or fp16/bf16."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 padding_mode="zeros", weight_format="int8", orig_dtype=torch.float32):
        kernel_size = nn.modules.utils._pair(kernel_size)
        super().__init__(weight_format, (out_channels, in_channels // groups, *kernel_size), orig_dtype)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = nn.modules.utils._pair(stride)
        self.padding = padding if isinstance(padding, str) else nn.modules.utils._pair(padding)
        self.dilation = nn.modules.utils._pair(dilation)
        self.groups = groups
        self.padding_mode = padding_mode
        self._reversed_padding_repeated_twice = None

    state_attrs = QuantizedModule.state_attrs + ("_reversed_padding_repeated_twice",)

    def init_kwargs(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups, "padding_mode": self.padding_mode,
                "weight_format": self.weight_format}

    @classmethod
    def from_float(cls, module: nn.Conv2d, weight) -> "QuantizedConv2d":
        q = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.padding_mode, weight_format=_format_of(weight),
                orig_dtype=module.weight.dtype)
        q._reversed_padding_repeated_twice = list(module._reversed_padding_repeated_twice)
        q.set_weight(weight)
        q._set_bias(module.bias)
        q.train(module.training)
        return q

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, w, b, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qtype.kind == "int":
            w = self.dequantized_weight(torch.float32).to(x.device)
            b = None if self.bias is None else self.bias.float()
            return self._conv(x.float(), w, b).to(x.dtype)
        return self._conv(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, " + super().extra_repr())
