"""QuantizedConv1d: replaces nn.Conv1d (audio front ends, 1-D CNNs).

A Conv1d is the Conv2d of height 1: its weight ``[out, in/groups, k]`` is
quantized as ``[out, in/groups, 1, k]`` (scales per output channel, as for
nn.Conv2d) and forward runs QuantizedConv2d on the input viewed as
``[N, C, 1, L]``.  So every QuantizedConv2d path (packed dynamic int8,
weight-only, int4 / fp16 / bf16 through ``F.conv2d``) serves 1-D convs too.
"""
from __future__ import annotations

import dataclasses
from typing import List

import torch
from torch import nn

from ..formats.int4_weight import Int4Weight
from ..kernels.torch_library import refuse_fx_proxy
from ..tensor import QuantizedWeight
from .conv import QuantizedConv2d
from .registry import register_qmodule

__all__ = ["QuantizedConv1d", "conv2d_weight_of"]


@register_qmodule(nn.Conv1d)
class QuantizedConv1d(QuantizedConv2d):
    """A Conv1d stored and run as the height-1 QuantizedConv2d.  Inputs are
    ``[N, C, L]`` or unbatched ``[C, L]``, as for nn.Conv1d.

    :func:`~mono_quant.quantize` replaces every exact ``nn.Conv1d`` with one
    (scales per output channel; every QuantizedConv2d path serves it).  The
    constructor is QuantizedConv2d's, with the height-1 2-D geometry
    (``kernel_size=(1, k)``, ``stride=(1, s)``, ...); build it with
    ``from_float`` or :func:`~mono_quant.load` rather than by hand.  Import it
    from ``mono_quant.modules``.

    Args:
        in_channels: As for nn.Conv1d.
        out_channels: As for nn.Conv1d.
        kernel_size: ``(1, k)`` for a Conv1d of kernel ``k``.
        stride: ``(1, s)``.
        padding: ``(0, p)``, or "same" / "valid".
        dilation: ``(1, d)``.
        groups: As for nn.Conv1d.
        padding_mode: As for nn.Conv1d.
        weight_format: "int8", "uint8", "int4", "fp16" or "bf16".
        orig_dtype: The float weight's dtype.

    Raises:
        RuntimeError: At forward, an input that is neither 2-D nor 3-D (as nn.Conv1d).

    Examples:
        >>> qmodel, _ = mq.quantize(nn.Sequential(nn.Conv1d(80, 256, 3, padding=1)))
        >>> type(qmodel[0]).__name__, qmodel(torch.randn(2, 80, 100)).shape
        ('QuantizedConv1d', torch.Size([2, 256, 100]))
    """

    view_is_float_layout = True  # .weight is the float [out, in/groups, k] (torch_compat)

    @classmethod
    def from_float(cls, module: nn.Conv1d, weight, activations="dynamic") -> "QuantizedConv1d":
        """``weight`` is the quantized (or cast) form of ``conv2d_weight_of(module.weight)``."""
        return super().from_float(_Conv2dView(module), weight, activations)

    def float_geometry(self):
        """nn.Conv1d's own 1-D ``kernel_size``, ``stride``, ``padding``, ``dilation`` (model code
        reads them: Whisper checks its input length with ``conv.stride[0]``); the forward runs
        with the height-1 2-D geometry (``stride2d`` ...)."""
        padding = self.padding2d if isinstance(self.padding2d, str) else (self.padding2d[1],)
        return (self.kernel_size2d[1],), (self.stride2d[1],), padding, (self.dilation2d[1],)

    def _geometry_2d(self, name: str, value, minimum: int) -> tuple:
        """An assigned 1-D stride / padding / dilation as the height-1 view's 2-D one."""
        one = (value,) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else None
        if one is None or len(one) != 1 or not isinstance(one[0], int) or isinstance(one[0], bool) \
                or one[0] < minimum:
            raise ValueError(f"QuantizedConv1d.{name}: one integer >= {minimum}, got {value!r}")
        return (0 if name == "padding" else 1, one[0])

    def _as_stored_shape(self, weight):
        """A weight of the float Conv1d's ``[out, in/groups, k]`` as the stored height-1 one."""
        if len(weight.shape) != 3:
            return weight
        if isinstance(weight, Int4Weight):  # packed rows: only the shape it stands for changes
            out, inner, k = weight.orig_shape
            return dataclasses.replace(weight, orig_shape=(out, inner, 1, k))
        if isinstance(weight, QuantizedWeight):
            axis = weight.axis + 1 if weight.axis is not None and weight.axis >= 2 else weight.axis
            return dataclasses.replace(weight, qdata=conv2d_weight_of(weight.qdata), axis=axis)
        return conv2d_weight_of(weight)

    @staticmethod
    def float_weight_shape(shape: List[int]) -> List[int]:
        """The float Conv1d's weight shape for this module's stored (height-1) ``shape``."""
        return [shape[0], shape[1], shape[3]]

    @staticmethod
    def as_float_layout(weight: torch.Tensor) -> torch.Tensor:
        """The stored height-1 ``[out, in/groups, 1, k]`` weight as the float Conv1d's ``[out, in/groups, k]``."""
        return weight.squeeze(2) if weight.dim() == 4 else weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        refuse_fx_proxy(x, self)  # (before x.dim(): a Proxy's is no number)
        if x.dim() not in (2, 3):
            raise RuntimeError(f"Expected 2D (unbatched) or 3D (batched) input to conv1d, but got input of size: "
                               f"{list(x.shape)}")
        unbatched = x.dim() == 2
        # (.contiguous(): torch's conv1d gives a contiguous result whatever x's strides; the height-1 view of a
        # transposed (B, L, C) x reads as channels_last, which the 2-D routes keep, and squeezed is (L*C, 1, C))
        y = super().forward((x.unsqueeze(0) if unbatched else x).unsqueeze(2)).squeeze(2).contiguous()
        return y.squeeze(0) if unbatched else y


class _Conv2dView:
    """What QuantizedConv2d.from_float reads of a float Conv2d, for a Conv1d."""

    def __init__(self, module: nn.Conv1d):
        self.in_channels, self.out_channels, self.groups = module.in_channels, module.out_channels, module.groups
        self.kernel_size = (1, module.kernel_size[0])
        self.stride = (1, module.stride[0])
        self.padding = module.padding if isinstance(module.padding, str) else (0, module.padding[0])
        self.dilation = (1, module.dilation[0])
        self.padding_mode = module.padding_mode
        left, right = module._reversed_padding_repeated_twice
        self._reversed_padding_repeated_twice = [left, right, 0, 0]  # F.pad order: (left, right, top, bottom)
        self.weight, self.bias, self.training = module.weight, module.bias, module.training


def conv2d_weight_of(weight: torch.Tensor) -> torch.Tensor:
    """The height-1 ``[out, in/groups, 1, k]`` view of a Conv1d weight, the one quantized."""
    return weight.unsqueeze(2)
