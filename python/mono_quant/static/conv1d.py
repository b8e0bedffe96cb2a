"""StaticConv1d: a Conv1d (audio front ends, 1-D CNNs) in static int8, as the height-1 StaticConv2d.

Its weight ``[out, in/groups, k]`` is quantized as ``[out, in/groups, 1, k]`` and runs through
the 2-D kernels (packed GEMM, or the depthwise kernel), as the dynamic QuantizedConv1d does.
Float inputs and outputs are nn.Conv1d's ``[batch, channels, length]``; int8 activations
between two of them are the NHWC codes of the height-1 image, ``[batch, 1, length, channels]``
(the capture keeps them apart from 2-D convs' and linear layers' int8 values: convert.py).

The kernels run it standing up: the width-1 image ``[batch, length, 1, channels]`` (the same
bytes) with the kernel ``(k, 1)``.  Their threads split an image by output rows, so the lying
height-1 image was one work item at batch 1: one thread, whatever the thread count.  The packed
weight's taps are in the same order either way (one of kh / kw is 1), so are the sums.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .conv_padding import static_padding
from .modules import StaticConv2d, conv_input_problem, nchw_output

__all__ = ["StaticConv1d"]


class StaticConv1d(StaticConv2d):
    """Conv1d (BatchNorm1d folded, ReLU fused) on int8 activations with fixed scales.

    The constructor is StaticConv2d's with the height-1 geometry (``kernel_size=(1, k)``,
    ``stride=(1, s)``, ``padding=(0, p)``, ``dilation=(1, d)``); ``from_float`` takes the
    nn.Conv1d.  Float inputs are ``[batch, channels, length]``, or unbatched ``[channels, length]``
    as nn.Conv1d takes them (whose int8 codes are ``[1, length, channels]``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 act=None, in_scale=1.0, out_scale=None, int8_input=False, in_zp=0, out_zp=0, padding_mode="zeros",
                 pads=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, act, in_scale,
                         out_scale, int8_input, in_zp, out_zp, padding_mode, pads)
        heights = (self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0],
                   *(self.pads or (0, 0))[:2])
        if heights != (1, 1, 0, 1, 0, 0):  # (a file's manifest may hold any 2-D geometry)
            raise ValueError(f"StaticConv1d takes the height-1 geometry kernel_size (1, k), stride (1, s), padding "
                             f"(0, p), dilation (1, d), pads None or (0, 0, left, right); got kernel_size "
                             f"{self.kernel_size}, stride {self.stride}, padding {self.padding}, dilation "
                             f"{self.dilation}, pads {self.pads}")

    @classmethod
    def from_float(cls, conv: nn.Conv1d, act, in_scale, out_scale, int8_input, in_zp=0, out_zp=0) -> "StaticConv1d":
        if not isinstance(conv, nn.Conv1d):
            raise TypeError(f"StaticConv1d.from_float takes an nn.Conv1d, got {conv!r}")
        padding, mode, pads = static_padding(conv)
        q = cls(conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]), (1, conv.stride[0]),
                (0, padding[0]), (1, conv.dilation[0]), conv.groups, act, in_scale, out_scale, int8_input, in_zp,
                out_zp, mode, None if pads is None else (0, 0, *pads))
        q._set_weight(conv.weight.unsqueeze(2), conv.bias, conv.groups, q.depthwise)
        return q

    def float_geometry(self) -> dict:
        """nn.Conv1d's own 1-D kernel_size / stride / padding / dilation (what a model's layer holds)."""
        return {"kernel_size": (self.kernel_size[1],), "stride": (self.stride[1],), "padding": (self.padding[1],),
                "dilation": (self.dilation[1],)}

    def _derive(self) -> None:
        super()._derive()
        k, s, p, d = self.kernel_size[1], self.stride[1], self.padding[1], self.dilation[1]
        self._standing = ((k, 1), (s, 1), (p, 0), (d, 1))  # the geometry the kernels run (module docstring)
        if "weight_dw" in self._buffers:  # the depthwise kernel reads (kh, kw) off its weight's shape
            w, zp, xw, bias = self._weights
            self._weights = (w.reshape(k, 1, w.shape[2]), zp, xw, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        problem = self.input_problem(x)
        if problem:
            raise ValueError(problem)
        # an unbatched sequence (as nn.Conv1d takes it): float [channels, length], int8 codes [1, length, channels]
        unbatched = x.dim() == (3 if self.int8_input else 2)
        x = x.unsqueeze(0) if unbatched else x
        xq = self._padded(x if self.int8_input else self._quantize_input(x.unsqueeze(2)))  # (lying: pads the length)
        batch, _, length, channels = xq.shape
        out = self._gemm(xq.reshape(batch, length, 1, channels), self.out_channels, *self._standing, self.groups)
        if self.out_scale is not None:  # int8 codes: the height-1 image's, as the next StaticConv1d reads them
            y = out.view(batch, 1, out.shape[1], self.out_channels)
        else:  # float: the [batch, channels, length] view of the kernels' channels-last output (graph.py
            y = nchw_output(out).squeeze(3)  # makes a model output contiguous, as for StaticConv2d)
        return y[0] if unbatched else y

    def input_problem(self, x: torch.Tensor) -> Optional[str]:
        """What is wrong with input ``x`` (its rank or channel count), or None."""
        if self.int8_input:
            if (x.dim() == 4 and x.shape[1] == 1 and x.shape[3] == self.in_channels) or (
                    x.dim() == 3 and x.shape[0] == 1 and x.shape[2] == self.in_channels):
                return None
            return (f"StaticConv1d({self.in_channels}, {self.out_channels}) takes int8 codes [batch, 1, length, "
                    f"{self.in_channels}] (or [1, length, {self.in_channels}] of an unbatched sequence), got shape "
                    f"{tuple(x.shape)}")
        if x.dim() == 2 and x.shape[0] == self.in_channels:
            return None  # (unbatched, as nn.Conv1d takes it)
        return conv_input_problem(self, x, 3, 1, "[batch, channels, length] (or [channels, length])", "sequence")

    def extra_repr(self) -> str:
        g = self.float_geometry()
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={g['kernel_size']}, stride={g['stride']}, "
                f"groups={self.groups}{self._pads_repr()}, act={self.act}, in_scale={self.in_scale:.4g} zp "
                f"{self.in_zp}, out={self._out_repr()}")
