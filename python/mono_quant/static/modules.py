"""Static int8 runtime modules: int8 activations with calibrated, fixed scales.

Between fused layers activations are int8 codes in -127..127 (never -128:
AVX2's ``vpmaddubsw`` sign trick stays exact and VNNI takes them as ``q + 128``
with column sums) with a zero-point: 0 for signed values, -127 for ReLU
outputs (all 255 levels on [0, max]); channels-last: ``[batch, h, w, c]`` for
images, ``[rows, features]`` for linear layers.  Each module knows its input
scale(s) / zero-point(s) and output ones from calibration; ``out_scale=None``
means a float output (NCHW for images, as a channels-last view).  The C kernels are in
csrc/static_int8.c; ``static/reference.py`` is their pure-torch twin.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..kernels import static_int8 as static_kernels
from ..kernels.conv_shape import conv_out_sizes
from ..kernels.settings import SETTINGS
from ..packing import pack_int8_linear
from ..formats import quantize_weight
from ..formats.checks import is_int
from .casts import refuse_casts
from .conv_padding import PADDING_MODES, pad_codes, pads_problem, static_padding
from .qparams_state import QParamsInStateDict

__all__ = ["StaticConv2d", "StaticLinear", "StaticAdd", "StaticGlobalAvgPool", "ACTIVATIONS", "act_bounds",
           "f32", "inverse", "check_zp", "check_scale", "check_flag", "check_int", "nchw_output", "conv_input_problem"]

#: fused activations: (lower, upper) clamp applied before requantizing
ACTIVATIONS = {None: (-math.inf, math.inf), "relu": (0.0, math.inf), "relu6": (0.0, 6.0)}


def nchw_output(out: torch.Tensor) -> torch.Tensor:
    """The kernels' channels-last float output as NCHW: a permuted view, no copy (a float max pool or
    ReLU after a conv takes it 10x faster than a contiguous copy).  Where the float op's contiguity
    matters - a ``.view`` and the model's outputs - ``graph.py`` makes it contiguous."""
    return out.permute(0, 3, 1, 2)


def act_bounds(act: Optional[str]) -> Tuple[float, float]:
    try:
        return ACTIVATIONS[act]
    except KeyError:
        raise ValueError(f"fused activation must be None, 'relu' or 'relu6', got {act!r}") from None


def f32(value: float) -> float:
    """The float32 nearest to value (scales are float32 everywhere in the kernels)."""
    return float(np.float32(value))


def inverse(scale: float) -> float:
    """1 / scale computed in float32, as the reference does."""
    return float(np.float32(1.0) / np.float32(scale))


def check_zp(name: str, value) -> int:
    if not is_int(value, -127) or value > 127:
        raise ValueError(f"{name} must be an int in -127..127, got {value!r}")
    return int(value)


def check_flag(name: str, value) -> bool:
    """A layer flag: True or False only (a file's manifest may hold "false", which bool() reads as True)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_scale(name: str, value) -> float:
    """A scale: a finite positive float, kept as float32 (as the kernels read it)."""
    try:  # (np.float32("2") parses text and True is 1.0: a manifest's "2" or true is no scale)
        scale = math.nan if isinstance(value, (bool, np.bool_, str, bytes)) else f32(value)
    except (TypeError, ValueError, OverflowError):  # (10**400 overflows the conversion)
        scale = math.nan
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{name} must be a finite positive float, got {value!r}")
    return scale


#: the C bindings' bound on a kernel size, stride, padding or dilation (MQ_MAX_CONV_ARG, csrc/bind.h)
_MAX_CONV_ARG = 1 << 20


def check_int(name: str, value, lo: int = 1, hi: Optional[int] = None) -> int:
    """An int in lo..hi (a count, groups, a dim): a file's manifest may hold anything, and int()
    would take 1.5 or True for one."""
    if not is_int(value, lo) or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be an int {bounds}, got {value!r}")
    return int(value)


def _check_pads(mode, pads, padding: Tuple[int, int]) -> tuple:
    """A static conv's (padding, padding_mode, pads): a mode of PADDING_MODES, and None or four ints
    in 0..2**20 (top, bottom, left, right) padded on the codes in that mode, the kernels' padding then
    zero (conv_padding.py).  Another mode than zeros with the kernels' padding given moves it to
    ``pads`` (the kernels pad zeros only); no padding at all is zeros, pads None."""
    if not isinstance(mode, str) or mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {mode!r}")
    if pads is None:
        if mode == "zeros" or not any(padding):
            return padding, "zeros", None
        pads = (padding[0], padding[0], padding[1], padding[1])
    elif (not isinstance(pads, (list, tuple)) or len(pads) != 4
            or any(not is_int(v, 0) or v > _MAX_CONV_ARG for v in pads)):
        raise ValueError(f"pads must be None or four ints (top, bottom, left, right) in 0..{_MAX_CONV_ARG}, "
                         f"got {pads!r}")
    elif any(padding):
        raise ValueError(f"pads {tuple(pads)} replace the kernels' padding, which must then be (0, 0), got "
                         f"{padding}")
    pads = tuple(int(v) for v in pads)
    return ((0, 0), mode, pads) if any(pads) else ((0, 0), "zeros", None)


def _check_pair(name: str, value, lo: int) -> Tuple[int, int]:
    """kernel_size / stride / padding / dilation: an int or a pair of ints in lo..2**20."""
    pair = nn.modules.utils._pair(value)
    if len(pair) != 2 or any(not is_int(v, lo) or v > _MAX_CONV_ARG for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints in {lo}..{_MAX_CONV_ARG}, got {value!r}")
    return int(pair[0]), int(pair[1])


class _StaticBase(QParamsInStateDict, nn.Module):
    """Scales, zero-points and the fused activation; ``out_scale=None``: float output."""

    def __init__(self, act: Optional[str], in_scale: float, out_scale: Optional[float], int8_input: bool,
                 in_zp: int = 0, out_zp: int = 0):
        super().__init__()
        act_bounds(act)
        self.act = act
        self.in_scale = check_scale("in_scale", in_scale)  # (only an output may be float: out_scale None)
        self.out_scale = None if out_scale is None else check_scale("out_scale", out_scale)
        self.int8_input = check_flag("int8_input", int8_input)
        self.in_zp = check_zp("in_zp", in_zp)
        self.out_zp = check_zp("out_zp", out_zp)

    def _apply(self, fn, *args, **kwargs):
        refuse_casts(fn, f"static int8 layer {type(self).__name__}")
        return super()._apply(fn, *args, **kwargs)

    def _epilogue_args(self):
        lo, hi = act_bounds(self.act)
        return lo, hi, inverse(self.out_scale) if self.out_scale is not None else 1.0

    def _out_repr(self) -> str:
        return f"int8 scale {self.out_scale:.4g} zp {self.out_zp}" if self.out_scale is not None else "float"

    def _out_dtype(self):
        return torch.int8 if self.out_scale is not None else torch.float32


class _WeightedStatic(_StaticBase):
    """Per-output-channel symmetric int8 weight, packed for the int8 GEMM (or
    kept [kh, kw, c] for the depthwise kernel), float32 bias."""

    #: quantize() of a model holding it keeps it as it is (mixed.py: quantized already)
    static_int8_layer = True

    def _set_weight(self, weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int, depthwise: bool):
        qw = quantize_weight(weight.detach().float(), "int8", axis=0, symmetric=True)
        self.register_buffer("weight_scale", qw.scale.float().contiguous())
        if depthwise:  # [c, 1, kh, kw] -> [kh, kw, c]: channels innermost, as the NHWC input
            self.register_buffer("weight_dw", qw.qdata[:, 0].permute(1, 2, 0).contiguous())
        else:
            for name, t in pack_int8_linear(qw, groups=groups).items():
                self.register_buffer(name, t)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous().clone())
        self._derive()

    def _derive(self) -> None:
        """x_w_scale = in_scale * weight_scale in float32 (the GEMM epilogue's per-channel factor),
        and the kernel's constant arguments as NumPy views, built once (not per call)."""
        self.x_w_scale = (torch.tensor(self.in_scale, dtype=torch.float32) * self.weight_scale).contiguous()
        bias = None if self.bias is None else self.bias.numpy()
        if "weight_dw" in self._buffers:
            self._weights = (self.weight_dw.numpy(), None, self.x_w_scale.numpy(), bias)
        else:
            self._weights = (self.weight_packed.numpy(), self.weight_colsum.numpy(), self.x_w_scale.numpy(), None,
                             bias, bool(int(self.weight_packed_info[3])))
        self._epilogue = self._epilogue_args()
        self._out_sizes = {}

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if "weight_scale" in self._buffers:
            self._derive()  # the buffers may be new tensors now
        return out

    def __getstate__(self):
        # torch.multiprocessing pickles each buffer by moving it into shared memory (share_memory_),
        # which frees the memory the cached NumPy views point at: garbage, in the sender and the
        # copy alike (a DataLoader worker's dataset, an mp.Queue).  Dropped here, from this module
        # and its state: each derives its own again on its next call (_arrays).
        self.__dict__["_weights"] = None
        return self.__dict__.copy()  # (object.__getstate__ is Python 3.11's)

    def _arrays(self) -> tuple:
        """The kernels' constant arguments (NumPy views of the buffers), derived again when
        pickling dropped them."""
        if self._weights is None:
            self._derive()
        return self._weights

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous()
        if x.dim() == 4:
            q = torch.empty(x.shape[0], x.shape[2], x.shape[3], x.shape[1], dtype=torch.int8)
        else:
            q = torch.empty(x.shape, dtype=torch.int8)
        static_kernels.quantize_static(x.numpy(), inverse(self.in_scale), q.numpy(), SETTINGS.num_threads(), self.in_zp)
        return q

    def _gemm(self, x_nhwc: torch.Tensor, n: int, kernel, stride, padding, dilation, groups) -> torch.Tensor:
        b, h, w, _ = x_nhwc.shape
        size = self._out_sizes.get((h, w))
        if size is None:
            size = self._out_sizes[(h, w)] = tuple(conv_out_sizes((h, w), kernel, stride, padding, dilation))
        out = torch.empty(b, size[0], size[1], n, dtype=self._out_dtype())
        weights = self._arrays()
        if len(weights) == 4:
            w, _, xw, bias = weights
            static_kernels.depthwise_static(x_nhwc.numpy(), w, None, xw, bias, out.numpy(), stride, padding, dilation,
                                *self._epilogue, torch.get_num_threads(), self.in_zp, self.out_zp)
        else:
            packed, colsum, xw, zp, bias, has_m128 = weights
            static_kernels.conv2d_static(x_nhwc.numpy(), packed, colsum, xw, zp, bias, out.numpy(), has_m128, kernel, stride,
                             padding, dilation, groups, *self._epilogue, torch.get_num_threads(), self.in_zp,
                             self.out_zp)
        return out


def conv_input_problem(layer, x: torch.Tensor, rank: int, channel_dim: int, layout: str, unbatched: str
                       ) -> Optional[str]:
    """What is wrong with a static conv's input ``x`` (its rank or channel count), or None."""
    if x.dim() == rank and x.shape[channel_dim] == layer.in_channels:
        return None
    name = type(layer).__name__
    head = f"{name}({layer.in_channels}, {layer.out_channels}) takes a {rank}-D {layout} input"
    if x.dim() != rank:
        hint = f" (unsqueeze(0) an unbatched {unbatched})" if x.dim() == rank - 1 else ""
        return f"{head}, got shape {tuple(x.shape)}{hint}"
    return (f"{head} with in_channels={layer.in_channels}, got {x.shape[channel_dim]} channels (shape "
            f"{tuple(x.shape)}): pass the input the float {name.replace('Static', '')} took")


class StaticConv2d(_WeightedStatic):
    """Conv2d (BatchNorm folded, ReLU fused) on int8 NHWC activations with fixed scales."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 act=None, in_scale=1.0, out_scale=None, int8_input=False, in_zp=0, out_zp=0, padding_mode="zeros",
                 pads=None):
        super().__init__(act, in_scale, out_scale, int8_input, in_zp, out_zp)
        self.in_channels, self.out_channels = check_int("in_channels", in_channels), check_int(
            "out_channels", out_channels)
        self.groups = check_int("groups", groups)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"groups={self.groups} must divide in_channels {self.in_channels} and out_channels "
                             f"{self.out_channels}")
        self.kernel_size, self.stride = _check_pair("kernel_size", kernel_size, 1), _check_pair("stride", stride, 1)
        self.padding, self.dilation = _check_pair("padding", padding, 0), _check_pair("dilation", dilation, 1)
        self.padding, self.padding_mode, self.pads = _check_pads(padding_mode, pads, self.padding)
        self.depthwise = self.groups == self.in_channels == self.out_channels and self.groups > 1

    @classmethod
    def from_float(cls, conv: nn.Conv2d, act, in_scale, out_scale, int8_input, in_zp=0, out_zp=0) -> "StaticConv2d":
        padding, mode, pads = static_padding(conv)
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding, conv.dilation,
                conv.groups, act, in_scale, out_scale, int8_input, in_zp, out_zp, mode, pads)
        q._set_weight(conv.weight, conv.bias, conv.groups, q.depthwise)
        return q

    def init_kwargs(self):
        kwargs = {"in_channels": self.in_channels, "out_channels": self.out_channels,
                  "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                  "dilation": list(self.dilation), "groups": self.groups, "act": self.act, "in_scale": self.in_scale,
                  "out_scale": self.out_scale, "int8_input": self.int8_input, "in_zp": self.in_zp,
                  "out_zp": self.out_zp}
        if self.pads is not None:  # (only then: files of zeros padding stay as earlier versions read them)
            kwargs.update(padding_mode=self.padding_mode, pads=list(self.pads))
        return kwargs

    def padded_sides(self) -> tuple:
        """(padding_mode, (top, bottom, left, right)) as the layer pads its input, the kernels' padding
        or ``pads`` (conv_padding.py): what persist_skeleton compares with a model's conv."""
        if self.pads is not None:
            return self.padding_mode, tuple(self.pads)
        top, left = self.padding
        return "zeros", (top, top, left, left)

    def _padded(self, xq: torch.Tensor) -> torch.Tensor:
        """NHWC codes ``xq`` with ``pads`` made on them (a mode the kernels don't pad: conv_padding.py)."""
        if self.pads is None:
            return xq
        problem = pads_problem(self.padding_mode, self.pads, xq.shape[1], xq.shape[2])
        if problem:
            raise ValueError(f"{type(self).__name__}({self.in_channels}, {self.out_channels}): {problem}")
        return pad_codes(xq, self.pads, self.padding_mode, self.in_zp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        problem = self.input_problem(x)
        if problem:
            raise ValueError(problem)
        xq = self._padded(x if self.int8_input else self._quantize_input(x))
        out = self._gemm(xq, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
                         self.groups)
        return out if self.out_scale is not None else nchw_output(out)

    def input_problem(self, x: torch.Tensor) -> Optional[str]:
        """What is wrong with input ``x`` (its rank or channel count), or None: the C kernel's
        own checks would only say its arrays disagree."""
        channel_dim = 3 if self.int8_input else 1  # int8 activations are NHWC, float inputs NCHW
        layout = "[batch, height, width, channels] int8" if self.int8_input else "[batch, channels, height, width]"
        return conv_input_problem(self, x, 4, channel_dim, layout, "image")

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}{self._pads_repr()}, act={self.act}, in_scale={self.in_scale:.4g} zp "
                f"{self.in_zp}, out={self._out_repr()}")

    def _pads_repr(self) -> str:
        return "" if self.pads is None else f", pads={tuple(self.pads)} ({self.padding_mode})"


class StaticLinear(_WeightedStatic):
    """Linear (BatchNorm1d folded, ReLU fused) on int8 [rows, features] activations."""

    def __init__(self, in_features: int, out_features: int, act=None, in_scale=1.0, out_scale=None,
                 int8_input=False, in_zp=0, out_zp=0):
        super().__init__(act, in_scale, out_scale, int8_input, in_zp, out_zp)
        self.in_features = check_int("in_features", in_features)
        self.out_features = check_int("out_features", out_features)

    @classmethod
    def from_float(cls, linear: nn.Linear, act, in_scale, out_scale, int8_input, in_zp=0, out_zp=0) -> "StaticLinear":
        q = cls(linear.in_features, linear.out_features, act, in_scale, out_scale, int8_input, in_zp, out_zp)
        q._set_weight(linear.weight, linear.bias, 1, False)
        return q

    def init_kwargs(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "act": self.act,
                "in_scale": self.in_scale, "out_scale": self.out_scale, "int8_input": self.int8_input,
                "in_zp": self.in_zp, "out_zp": self.out_zp}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        problem = self.input_problem(x)
        if problem:
            raise ValueError(problem)
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        xq = rows.contiguous() if self.int8_input else self._quantize_input(rows)
        out = self._gemm(xq.view(xq.shape[0], 1, 1, self.in_features), self.out_features, (1, 1), (1, 1), (0, 0),
                         (1, 1), 1)
        return out.reshape(*lead, self.out_features)

    def input_problem(self, x: torch.Tensor) -> Optional[str]:
        """What is wrong with input ``x`` (its width), or None: a reshape to the wrong width
        fails obscurely or, when the sizes happen to divide, mixes rows up."""
        if x.dim() > 0 and x.shape[-1] == self.in_features:
            return None
        got = "a 0-d tensor" if x.dim() == 0 else f"last dimension {x.shape[-1]} (shape {tuple(x.shape)})"
        return (f"StaticLinear({self.in_features}, {self.out_features}) takes in_features={self.in_features} in "
                f"the input's last dimension, got {got}: pass the input the float Linear took")

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, act={self.act}, in_scale={self.in_scale:.4g} "
                f"zp {self.in_zp}, out={self._out_repr()}")


class StaticAdd(_StaticBase):
    """act(a + b) of two int8 activations (a: in_scale / in_zp, b: b_scale / b_zp), requantized."""

    def __init__(self, act=None, in_scale=1.0, b_scale=1.0, out_scale=None, in_zp=0, b_zp=0, out_zp=0):
        super().__init__(act, in_scale, out_scale, True, in_zp, out_zp)
        self.b_scale = check_scale("b_scale", b_scale)
        self.b_zp = check_zp("b_zp", b_zp)

    def init_kwargs(self):
        return {"act": self.act, "in_scale": self.in_scale, "b_scale": self.b_scale, "out_scale": self.out_scale,
                "in_zp": self.in_zp, "b_zp": self.b_zp, "out_zp": self.out_zp}

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape:
            raise ValueError(f"StaticAdd: int8 inputs of shapes {tuple(a.shape)} and {tuple(b.shape)} (no "
                             "broadcasting on the int8 path)")
        out = torch.empty(a.shape, dtype=self._out_dtype())
        lo, hi, inv = self._epilogue_args()
        static_kernels.add_static(a.contiguous().numpy(), self.in_scale, b.contiguous().numpy(), self.b_scale, out.numpy(), lo,
                      hi, inv, SETTINGS.num_threads(), self.in_zp, self.b_zp, self.out_zp)
        if self.out_scale is None and out.dim() == 4:
            return nchw_output(out)
        return out

    def extra_repr(self) -> str:
        return (f"act={self.act}, scales=({self.in_scale:.4g}, {self.b_scale:.4g}), zps=({self.in_zp}, {self.b_zp}), "
                f"out={self._out_repr()}")


class StaticGlobalAvgPool(_StaticBase):
    """Mean over the pixels of int8 NHWC activations: exact int32 sums, one scale."""

    def __init__(self, in_scale=1.0, out_scale=None, flatten=False, act=None, in_zp=0, out_zp=0):
        super().__init__(act, in_scale, out_scale, True, in_zp, out_zp)
        self.flatten = check_flag("flatten", flatten)

    def init_kwargs(self):
        return {"in_scale": self.in_scale, "out_scale": self.out_scale, "flatten": self.flatten, "act": self.act,
                "in_zp": self.in_zp, "out_zp": self.out_zp}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        out = torch.empty(b, c, dtype=self._out_dtype())
        lo, hi, inv = self._epilogue_args()
        mul = float(np.float32(self.in_scale) / np.float32(h * w))
        static_kernels.avgpool_static(x.contiguous().numpy(), mul, out.numpy(), lo, hi, inv, self.in_zp, self.out_zp)
        if self.flatten:
            return out
        return out.view(b, 1, 1, c) if self.out_scale is not None else out.view(b, c, 1, 1)

    def extra_repr(self) -> str:
        return f"in_scale={self.in_scale:.4g} zp {self.in_zp}, flatten={self.flatten}, out={self._out_repr()}"
