"""QuantizedConv2d: replaces nn.Conv2d (any stride, padding, dilation, groups, padding mode)."""
from __future__ import annotations

from typing import Optional


import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..formats import checked_activations, format_of
from ..formats import layer_cache
from ..formats.base import WeightFormat
from ..formats.layer_cache import float_weight, kernel_args_stamped
from ..formats.packed_linear import conv_kernel_takes, dequantized_packed, packed_linear, takes_amx, weight_only_mode
from ..kernels import depthwise, direct_conv, dynamic_conv, settings
from ..kernels.depthwise import depthwise_conv2d, takes_depthwise
from ..kernels.conv_shape import conv_out_sizes
from ..kernels.dynamic_conv import direct_applies
from ..kernels.half_conv import direct_pad_fits, half_conv2d_raw
from ..kernels.settings import SETTINGS
from ..torch_features import autocast_enabled, autocast_off
from ..kernels.direct_conv import (direct_conv2d, direct_conv2d_int4, direct_conv2d_int8, float_conv_panels, live_bias,
                                  int8_conv_arrays, int8_conv_panels)
from ..formats.int4_call import kept_int4_linear
from ..formats.int4_weight import effective_group
from ..kernels.int8 import conv2d_int8_raw, linear_int8_raw
from ..kernels.torch_library import check_jit_trace
from ..kernels.stamps import make_stamp, tensors_unchanged
from ..kernels.layout import INT8_K_GROUP, round_up, transposed_planes
from ..packing import can_pack, pack_int8_linear
from ..orig_dtype import orig_dtype_of
from ..formats import traced_forward
from .input_checks import check_conv_channels, check_float_input, strides_like_channels_last
from .reduce_range import ReduceRange
from .registry import QuantizedModule, register_qmodule

__all__ = ["QuantizedConv2d", "DYNAMIC_MIN_K", "DYNAMIC_MIN_K_POINTWISE", "DYNAMIC_MIN_N_POINTWISE",
           "DYNAMIC_MIN_MACS_PER_IMAGE", "DIRECT_MIN_MACS_PER_IMAGE",
           "DYNAMIC_CHUNK_BYTES"]

# Dynamic int8 convs with a reduction (in_channels/groups * kh * kw) shorter than this, or
# fewer multiply-adds per image, run F.conv2d on the dequantized weight (see
# QuantizedConv2d._packed_pays).
DYNAMIC_MIN_K = 64
# The floors of a 1x1 conv's input and output channels (per group): a pointwise conv's int8
# route quantizes and transposes the whole image for in_channels multiply-adds per input value,
# and writes its NCHW output back from NHWC sums, where oneDNN's fp32 1x1 conv is one GEMM on
# the NCHW image.  On the AVX2 host (bench_depthwise.py's MobileNetV2 shapes, 56x56 and 14x14,
# interleaved, 1 thread) the int8 route ran at 0.69-0.95 of fp32's speed for 64 input channels
# whatever the output channels, 0.75-1.10 for 144 and 0.89-1.35 for 384, and at 0.75-0.96 for
# 16-32 output channels of 144-192 inputs (0.94-1.22 from 48 outputs).  3x3 convs of 8-12
# channels (k 72-108) and 16-24 outputs ran 1.2-2.5x faster in int8: the floors are a 1x1's only.
DYNAMIC_MIN_K_POINTWISE = 128
DYNAMIC_MIN_N_POINTWISE = 48
DYNAMIC_MIN_MACS_PER_IMAGE = 1 << 18
# The same rule's floor where the direct conv route takes the layer (kernels.dynamic_conv): no
# im2col and one C region per call, so far smaller convs beat F.conv2d (bench_dynamic_conv.py:
# 16->16 channels on 8x8, 147k per image, and 36k-per-image convs ran faster packed).  The
# route takes any channel count since 30 Nov, but short reductions (k < DYNAMIC_MIN_K: a
# grayscale stem's 9, a 16-channel 1x1 shortcut's 16) stay on F.conv2d: with the floors off,
# ResNet8 at batch 64 ran at 0.68 of fp32's time instead of 0.56 on a quiet host, 1.32
# instead of 0.99 beside two busy processes (bench_dynamic_conv.py --old-stem, 2 threads).
DIRECT_MIN_MACS_PER_IMAGE = 1 << 15
# Bytes of int8 im2col rows per dynamic conv call: larger batches go through in chunks of
# images (see QuantizedConv2d._dynamic_conv); about what the L2 keeps beside the weight.
DYNAMIC_CHUNK_BYTES = 1 << 20

# QuantizedConv2d.forward's routes (see QuantizedConv2d._route), and per module the last one
# taken with what it was chosen for: a weak map, so deepcopy and state_dict never see it.
_PACKED, _FLOAT, _FORMAT, _DIRECT, _DEPTHWISE, _INT4_ROWS, _HALF, _ONE_PIXEL, _POINTWISE = (
    "packed", "float", "format", "direct", "depthwise", "int4 rows", "half", "one pixel", "pointwise")
_ROUTES = layer_cache.per_layer_cache()
# What a route depends on besides x and kernel_args' tensors (stamp sources, kernels/stamps.py):
# the layer's format, mode, geometry, the size rules of this module (tests change them) and the kernel
# level (set_isa: settings.LEVEL_MARK).
_ROUTE_SOURCES = tuple((None, name) for name in (
    "weight_format", "activations", "in_channels", "out_channels", "groups", "kernel_size2d", "stride2d",
    "padding2d", "dilation2d", "padding_mode", "weight_symmetric")) + ((globals(), "DYNAMIC_MIN_K"),
                                                   (globals(), "DYNAMIC_MIN_K_POINTWISE"),
                                                   (globals(), "DYNAMIC_MIN_N_POINTWISE"),
                                                   (globals(), "DYNAMIC_MIN_MACS_PER_IMAGE"),
                                                   (globals(), "DIRECT_MIN_MACS_PER_IMAGE"),
                                                   (vars(dynamic_conv), "DIRECT_ROUTE"),
                                                   (vars(direct_conv), "MAX_OUTPUTS"),
                                                   (vars(direct_conv), "GROUPED_MAX_OUTPUTS"),
                                                   (vars(direct_conv), "GROUPED_NARROW_MAX_OUTPUTS"),
                                                   (vars(direct_conv), "POINTWISE_TORCH_LEVELS"),
                                                   (vars(direct_conv), "POINTWISE_TORCH_MAX_PIXELS"),
                                                   (vars(direct_conv), "MIN_K"),
                                                   (vars(direct_conv), "LARGE_WEIGHT_OUTPUTS_FACTOR"),
                                                   (vars(direct_conv), "FILL_ELEMENTS_PER_PIXEL"),
                                                   (vars(direct_conv), "FILL_MAX_ELEMENTS"),
                                                   (vars(direct_conv), "SHORT_K"),
                                                   (vars(direct_conv), "SHORT_K_MAX_PIXELS"),
                                                   (vars(depthwise), "LEVELS"),
                                                   (vars(depthwise), "WIDE_TAPS"),
                                                   (vars(depthwise), "WIDE_TAPS_MAX_BATCH"),
                                                   (vars(depthwise), "MAX_PLANE"),
                                                   (vars(settings), "LEVEL_MARK"))
# What the float route's weight and bias are made of: kernel_args' sources but the column sums.
_FLOAT_SOURCES = tuple(source for source in layer_cache.KERNEL_ARG_SOURCES if source[1] != "weight_colsum")


def _torch_layout(x: torch.Tensor, y: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """``y`` (a conv's result for ``x``, NCHW where a C kernel wrote it) in the memory format torch's
    conv gives: channels_last for an input of channels_last strides (c10's rule), else as it is
    (contiguous after a circular padding: torch pads it into a new contiguous tensor)."""
    if padding_mode == "circular":
        return y.contiguous()
    if (x.is_contiguous() and x.stride(1) != 1) or not strides_like_channels_last(x):
        return y
    return y.contiguous(memory_format=torch.channels_last)


def _nhwc_rows(x: torch.Tensor) -> torch.Tensor:
    """A float32 CPU NCHW ``x`` as its pixels' rows [batch * height * width, channels] (a 1x1 conv's
    GEMM input), transposed in C (as _nchw says why)."""
    batch, channels = x.shape[0], x.shape[1]
    planes = transposed_planes(x.numpy().reshape(batch, channels, x.shape[2] * x.shape[3]), SETTINGS.num_threads())
    return torch.from_numpy(planes).reshape(-1, channels)


def _pixel_rows(x: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """A float32 CPU contiguous NCHW ``x``'s every (sh, sw)-th pixel as rows [pixels, channels] (a strided
    1x1 conv's GEMM input): one NumPy gather, 6 us for 208 channels on 8x8 at stride 2 where torch's slice,
    copy and the C transpose took 30."""
    return torch.from_numpy(np.ascontiguousarray(x.numpy()[:, :, ::sh, ::sw].transpose(0, 2, 3, 1))).reshape(
        -1, x.shape[1])


def _nchw(rows: torch.Tensor, batch: int, out_h: int, out_w: int) -> torch.Tensor:
    """float32 CPU NHWC ``rows`` [batch * out_h * out_w, channels] as a contiguous NCHW tensor, transposed
    in C (kernels.layout.transposed_planes): torch's permute().contiguous() of a few thousand floats took
    12-54 us (its strided copy), NumPy's 12-80 us (about a float a nanosecond); a weight-only 1x1 conv on
    64 pixels is a ~150 us GEMM."""
    channels = rows.shape[1]
    planes = transposed_planes(rows.numpy().reshape(batch, out_h * out_w, channels), SETTINGS.num_threads())
    return torch.from_numpy(planes).reshape(batch, channels, out_h, out_w)


@register_qmodule(nn.Conv2d)
class QuantizedConv2d(ReduceRange, QuantizedModule):
    """A Conv2d whose weight is int8 per output channel, or fp16/bf16.

    An int8 weight is also packed per group for the int8 matmul kernels
    (docs/formats.md); forward then runs im2col (for a 1x1 without padding the
    pixels, every s-th at stride s; one-pixel images' NCHW bytes as they are) into the
    same dynamic int8 or weight-only matmul as QuantizedLinear, or, dynamic with one group and symmetric weights, the
    direct int8 conv kernel on the same packed weight (no im2col; the same
    bits, ``kernels.dynamic_conv``).  Depthwise convs (one input channel per group), every
    format, run the C float depthwise kernel on the dequantized weight (``kernels.depthwise``);
    string paddings and inputs the kernels can't take ``F.conv2d`` on it.  int4 weights run,
    for a large weight on few pixels, the im2col rows through the int4 Linear's call (its
    activations: :meth:`int4_rows_fit`), else the direct kernel on panels of the
    dequantized weight where it fits (small convs), else ``F.conv2d`` on it; fp16 / bf16 ones
    the C fp16 convs where they win (small outputs, large 3x3 stride-1 convs by Winograd),
    else ``F.conv2d`` on the widened weight (formats/half_conv.py).  ``reduce_range`` (:meth:`set_reduce_range`):
    dynamic activations in 7 bits, per image, as QuantizedLinear's.

    Built by :func:`~mono_quant.quantize` or :func:`~mono_quant.load`; the
    constructor (nn.Conv2d's arguments) makes an empty layer.

    Args:
        in_channels: As for nn.Conv2d.
        out_channels: As for nn.Conv2d.
        kernel_size: As for nn.Conv2d (an int or a pair).
        stride: As for nn.Conv2d.
        padding: As for nn.Conv2d (an int, a pair, "same" or "valid").
        dilation: As for nn.Conv2d.
        groups: As for nn.Conv2d.
        padding_mode: As for nn.Conv2d ("zeros", "reflect", "replicate", "circular").
        weight_format: "int8", "uint8", "int4", "fp16" or "bf16".
        orig_dtype: The float weight's dtype.

    Examples:
        >>> qmodel, _ = mq.quantize(nn.Sequential(nn.Conv2d(64, 128, 3, padding=1)))
        >>> y = qmodel(torch.randn(8, 64, 56, 56))
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 padding_mode="zeros", weight_format="int8", orig_dtype=torch.float32):
        kernel_size = nn.modules.utils._pair(kernel_size)
        super().__init__(weight_format, (out_channels, in_channels // groups, *kernel_size), orig_dtype)
        self.in_channels = in_channels
        self.out_channels = out_channels
        # the 2-D geometry the forward runs with (a QuantizedConv1d's is its height-1 view) ...
        self.kernel_size2d = kernel_size
        self.stride2d = nn.modules.utils._pair(stride)
        self.padding2d = padding if isinstance(padding, str) else nn.modules.utils._pair(padding)
        self.dilation2d = nn.modules.utils._pair(dilation)
        # ... and the float layer's kernel_size, which model code reads; stride, padding and dilation
        # (Whisper reads conv.stride[0]) are properties over the 2-D geometry below
        self.kernel_size = self.float_geometry()[0]
        self.groups = groups
        self.padding_mode = padding_mode
        self._reversed_padding_repeated_twice = None
        self.activations = "dynamic"

    state_attrs = QuantizedModule.state_attrs + ("_reversed_padding_repeated_twice", "activations", "reduce_range")

    def float_geometry(self):
        """(kernel_size, stride, padding, dilation) as the float layer this replaces has them."""
        return self.kernel_size2d, self.stride2d, self.padding2d, self.dilation2d

    # Model code assigns these as on the float conv (segmentation models' output-stride change:
    # stride 1, dilation 2, padding 2): they set the geometry the forward runs with (assigned as plain
    # attributes they changed the repr and nothing else).  As torch's conv, a new padding does not
    # reach a non-zeros padding_mode's _reversed_padding_repeated_twice.
    @property
    def stride(self):
        return self.float_geometry()[1]

    @stride.setter
    def stride(self, value):
        self.stride2d = self._geometry_2d("stride", value, minimum=1)

    @property
    def padding(self):
        return self.float_geometry()[2]

    @padding.setter
    def padding(self, value):
        if isinstance(value, str):
            if value not in ("same", "valid"):
                raise ValueError(f"{type(self).__name__}.padding: 'same', 'valid' or integers, got {value!r}")
            if value == "same" and any(s != 1 for s in self.stride2d):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding2d = value
            return
        self.padding2d = self._geometry_2d("padding", value, minimum=0)

    @property
    def dilation(self):
        return self.float_geometry()[3]

    @dilation.setter
    def dilation(self, value):
        self.dilation2d = self._geometry_2d("dilation", value, minimum=1)

    def _geometry_2d(self, name: str, value, minimum: int) -> tuple:
        """The 2-D (height, width) form of an assigned stride / padding / dilation, checked."""
        pair = nn.modules.utils._pair(value)
        if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in pair):
            raise ValueError(f"{type(self).__name__}.{name}: two integers >= {minimum} (or one), got {value!r}")
        return tuple(pair)

    def init_kwargs(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size2d), "stride": list(self.stride2d),
                "padding": self.padding2d if isinstance(self.padding2d, str) else list(self.padding2d),
                "dilation": list(self.dilation2d), "groups": self.groups, "padding_mode": self.padding_mode,
                "weight_format": self.weight_format}

    @classmethod
    def from_float(cls, module: nn.Conv2d, weight, activations="dynamic") -> "QuantizedConv2d":
        q = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.padding_mode, weight_format=format_of(weight).name,
                orig_dtype=orig_dtype_of(module.weight.dtype))
        q._reversed_padding_repeated_twice = list(module._reversed_padding_repeated_twice)
        q.set_weight(weight)
        q.activations = checked_activations(q, activations, built=False)  # (a float-input format keeps it)
        # packed unless depthwise (one input channel per group, groups > 1): a one-group conv of
        # one input channel (a grayscale stem) is packed for the direct route (kernels.dynamic_conv)
        if can_pack(weight) and (module.in_channels // module.groups > 1 or module.groups == 1):
            q.set_packed(pack_int8_linear(weight, groups=module.groups))
        q._set_bias(module.bias)
        q.train(module.training)
        return q

    def set_activations(self, activations) -> None:
        """Choose the execution mode: "dynamic" or None (weight-only). Raises ValueError otherwise."""
        self.activations = checked_activations(self, activations)

    def conv_with(self, x: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
        """torch's conv of ``x`` with this layer's geometry and the given float weight and bias."""
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, w, b, self.stride2d, 0, self.dilation2d, self.groups)
        return F.conv2d(x, w, b, self.stride2d, self.padding2d, self.dilation2d, self.groups)

    def _packed_conv(self, x: torch.Tensor, info: dict, args: list, whole: tuple) -> torch.Tensor:
        """The int8 matmul on im2col rows; float32 NCHW out.  Dynamic: all in
        C (per-image int8, NHWC int8 im2col).  Weight-only: torch's unfold (for a
        1x1 without padding the pixels, every s-th at stride s) into the fp32 x int8 kernel."""
        nhwc = strides_like_channels_last(x)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0, 0)
        else:
            padding = tuple(self.padding2d)
        batch, _, height, width = x.shape
        (kh, kw), (sh, sw) = self.kernel_size2d, self.stride2d
        out_h, out_w = conv_out_sizes((height, width), self.kernel_size2d, self.stride2d, padding, self.dilation2d)
        if self.activations == "dynamic":
            return self._dynamic_conv(x.contiguous(), whole, padding, out_h, out_w, info["in_features"])
        plain = x.dtype == torch.float32 and x.is_cpu and not x.requires_grad  # (NumPy's transposes: see _nchw)
        if (kh, kw) == (1, 1) and padding == (0, 0):
            if (sh, sw) != (1, 1):  # a strided 1x1 (a projection shortcut): every s-th pixel is a row (no im2col)
                rows = (_pixel_rows(x, sh, sw) if plain and not nhwc and x.is_contiguous()
                        else x[:, :, ::sh, ::sw].permute(0, 2, 3, 1).reshape(-1, x.shape[1]))
            elif height * width == 1 and x.is_contiguous():  # one pixel an image (a squeeze-excitation's): the rows
                rows = x.view(batch, x.shape[1])
            elif plain and not nhwc:  # 1x1: each pixel is a row
                rows = _nhwc_rows(x)
            else:
                rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        else:  # torch's im2col [B, C*kh*kw, L], reordered to rows of (group, kh, kw, channel): the packed K order
            cols = F.unfold(x, self.kernel_size2d, self.dilation2d, padding, self.stride2d)
            cols = cols.reshape(batch, self.groups, self.in_channels // self.groups, kh * kw, -1)
            rows = cols.permute(0, 4, 1, 3, 2).reshape(-1, cols.shape[1] * cols.shape[2] * cols.shape[3])
        groups, k = self.groups, info["in_features"]
        if groups == 1:  # (no column slice: ~1 us); weight-only rows on AMX-BF16 where a Linear's would be
            y = packed_linear(self, rows, args[0], amx=self.activations is None
                              and takes_amx(rows.shape[0], k, self.out_channels))
        else:
            y = torch.cat([packed_linear(self, rows[:, g * k:(g + 1) * k], args[g]) for g in range(groups)], dim=1)
        if out_h * out_w == 1 and not nhwc:  # one pixel: NHWC rows are NCHW bytes (torch's strides, as a view)
            return y.reshape(batch, self.out_channels, 1, 1)
        if plain and not nhwc and y.dtype == torch.float32:
            return _nchw(y, batch, out_h, out_w)
        y = y.reshape(batch, out_h, out_w, self.out_channels).permute(0, 3, 1, 2)
        return y if nhwc else y.contiguous()  # (the rows are NHWC: a channels_last result as it is)

    def _dynamic_conv(self, x: torch.Tensor, whole: tuple, padding, out_h: int, out_w: int, k: int) -> torch.Tensor:
        """The C dynamic int8 conv over chunks of images whose int8 im2col rows take about
        DYNAMIC_CHUNK_BYTES, each chunk's result written by C in NCHW into one output: the
        rows then stay in cache between im2col and the GEMM, and no large buffer is
        allocated (and page-faulted) per call.  Activations are quantized per image and
        the integer GEMM is exact, so the chunks give the same result as one call."""
        batch = x.shape[0]
        per_image = out_h * out_w * round_up(k, INT8_K_GROUP) * self.groups
        images = max(1, DYNAMIC_CHUNK_BYTES // max(1, per_image))
        geometry = (tuple(self.kernel_size2d), tuple(self.stride2d), padding, tuple(self.dilation2d), self.groups)
        # NCHW straight from C (a torch permute().contiguous() here waited on torch's thread team under load)
        if images >= batch or direct_applies(x.shape[1], self.groups, self.kernel_size2d, padding,
                                             self.dilation2d, whole[3].any()):  # no im2col
            return torch.from_numpy(conv2d_int8_raw(kernels.to_numpy(x), whole, geometry,
                                                    reduce_range=self.reduce_range))
        out = torch.empty(batch, self.out_channels, out_h, out_w)
        out_np = out.numpy()  # chunks copied by numpy, one thread: no torch op between the C calls
        for b0 in range(0, batch, images):
            out_np[b0:b0 + images] = conv2d_int8_raw(kernels.to_numpy(x[b0:b0 + images]), whole, geometry,
                                                     reduce_range=self.reduce_range)
        return out

    def _one_pixel_1x1(self, x: torch.Tensor) -> bool:
        """A one-group 1x1 conv without padding on one-pixel images (a squeeze-excitation's): its rows are x's
        bytes (concrete sizes)."""
        return (self.groups == 1 and x.shape[2] * x.shape[3] == 1 and tuple(self.kernel_size2d) == (1, 1)
                and tuple(self.padding2d) == (0, 0))

    def _plain_pointwise(self) -> bool:
        """A 1x1 conv at stride 1 without padding: each input pixel is a row of its GEMM."""
        return (tuple(self.kernel_size2d) == (1, 1) and tuple(self.stride2d) == (1, 1)
                and tuple(self.padding2d) == (0, 0))

    def _output_pixels(self, shape):
        """batch x out_h x out_w of this conv on an input of sizes ``shape`` (ints or symbolic sizes)."""
        pixels = shape[0]
        for size in conv_out_sizes(shape[2:], self.kernel_size2d, self.stride2d, self.padding2d, self.dilation2d):
            pixels = pixels * size
        return pixels

    def _packed_pays(self, x: torch.Tensor, isa: Optional[str] = None) -> bool:
        """Whether the packed kernels beat F.conv2d on the weight dequantized per call.
        Dynamic: unless the reduction is short (in_channels/groups * kh * kw below
        DYNAMIC_MIN_K, e.g. a first conv on RGB) or an image needs fewer than
        DYNAMIC_MIN_MACS_PER_IMAGE multiply-adds (a 16-channel conv on 8x8): the int8
        GEMM's fixed costs (quantizing and copying the image, the NHWC result, ~12 us
        of Python and C per call) then outweigh its few multiply-adds (bench_models.py:
        2-10x slower than fp32 at K = 27, 1.2-1.5x at 150k multiply-adds per image);
        where the direct conv route takes the layer (kernels.dynamic_conv.direct_applies:
        no im2col, one C region, any channel count) the floor is DIRECT_MIN_MACS_PER_IMAGE
        instead; DYNAMIC_MIN_K holds on both routes (a grayscale stem's 9 multiply-adds per
        output ran slower in int8 than F.conv2d at batch 64).
        Both rules look at one image, never the batch size.  Weight-only convs with many
        output pixels per output channel are faster as F.conv2d on the dequantized
        weight: the fp32 im2col (kh*kw times the input) costs more than dequantizing the
        weight (bench_conv.py: the packed weight-only path wins below about
        out_channels/groups/8 output pixels: a GEMM and a call a group), except where the direct
        kernel takes them (kernels.direct_conv: faster on kept panels, and on panels filled per
        call from about one pixel per FILL_ELEMENTS_PER_PIXEL weight elements, for weights under
        FILL_MAX_ELEMENTS).  ``isa``: as ``_direct_fits``'."""
        if self.activations == "dynamic":
            k = self.in_channels // self.groups * self.kernel_size2d[0] * self.kernel_size2d[1]
            # (weight_symmetric, not the zero-point buffer's values: torch.compile traces this rule;
            # a symmetric weight's zero-points are 0, and C checks the buffer itself)
            direct = not isinstance(self.padding2d, str) and direct_applies(
                self.in_channels, self.groups, self.kernel_size2d, self.padding2d, self.dilation2d,
                not getattr(self, "weight_symmetric", False))
            if k < DYNAMIC_MIN_K:  # too few multiply-adds per output for int8 to pay, either route
                return False
            if self.kernel_size2d[0] * self.kernel_size2d[1] == 1 and (
                    k < DYNAMIC_MIN_K_POINTWISE or self.out_channels // self.groups < DYNAMIC_MIN_N_POINTWISE):
                return False  # a 1x1 conv: the image's quantize and transposes outweigh its few products
            pixels = self._output_pixels((1, *x.shape[1:]))  # per image: never depends on the batch it came in
            floor = DIRECT_MIN_MACS_PER_IMAGE if direct else DYNAMIC_MIN_MACS_PER_IMAGE
            return pixels * k * (self.out_channels // self.groups) >= floor
        pixels = self._output_pixels(x.shape)
        few_pixels = pixels * 8 <= self.out_channels // self.groups  # (per group: a GEMM a group, and a call each)
        if isinstance(few_pixels, torch.SymBool):  # symbolic sizes: the rule as it is (no guard); no direct route
            return few_pixels
        if not few_pixels:
            return False
        # few pixels: the direct kernel where it fits (isa: _direct_fits'), on kept panels, or on panels filled
        # per call once the pixels' work outweighs the fill (direct_conv.FILL_ELEMENTS_PER_PIXEL); not for a
        # plain 1x1 conv, whose packed route is one GEMM on the image's pixels (no im2col for the direct
        # kernel to save): 6 December 2026, AMD Zen 3, 1 thread, time / fp32 at 4x4, batch 1, filled panels ->
        # packed: 440 -> 440 0.83 -> 0.96, 320 -> 1280 0.82 -> 1.02, 960 -> 160 0.79 -> 0.82
        numel = self.weight_numel()
        fill_max = direct_conv.FILL_MAX_ELEMENTS.get(SETTINGS.isa if isa is None else isa, 0)
        if self._one_pixel_1x1(x):
            return True  # one-pixel images, any stride: _ONE_PIXEL's GEMV on x's bytes (the direct kernel: 0.7-0.9x)
        if x.dtype == torch.float32 and self.pointwise_on_kept_weight(pixels, SETTINGS.isa if isa is None else isa):
            return False  # torch's conv on the kept float weight (_FLOAT)
        # (a strided 1x1 stays on the direct kernel where it fits: 208 -> 440 at stride 2 on 8x8, 0.85x fp32's
        # speed there, 0.72x as packed pixels)
        pointwise = self._plain_pointwise()
        return not (self._direct_fits(x, isa) and (numel <= layer_cache.SMALL_WEIGHT_ELEMENTS or (
            not pointwise and pixels * direct_conv.FILL_ELEMENTS_PER_PIXEL >= numel and numel < fill_max)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if autocast_enabled():  # every route outside autocast: the C ones and the ops never follow it
            with autocast_off(x):
                return QuantizedConv2d.forward(self, x)  # (this class's: a Conv1d's forward takes 3-D inputs)
        # (the C routes write NCHW: _torch_layout gives their result the layout torch's conv would)
        if traced_forward.use_ops(x, self):  # graph capture or autograd: the torch.library ops
            check_float_input(x, type(self).__name__)
            check_conv_channels(x, self)
            check_jit_trace(x, self, size_routes=True)
            return _torch_layout(x, traced_forward.conv2d_forward(self, x), self.padding_mode)
        route = _ROUTES.get(self)
        # (a kept route was made for a floating x of this dtype: the input check is made here only)
        if (route is None or route[0] != x.shape or route[1] is not x.dtype or route[2] is not x.is_cpu
                or not tensors_unchanged(self.__dict__, route[3])):
            check_float_input(x, type(self).__name__)
            check_conv_channels(x, self)
            route = self._route(x)
            if route is None:  # no packed int8 weight
                return _torch_layout(x, self.format.conv2d(self, x), self.padding_mode)
        if route[4] is not None:  # float32 x, a kept float weight: fp32's own call
            return F.conv2d(x, *route[4])
        if route[5] is _INT4_ROWS:  # float32 x, an int4 weight past the kept size, few pixels: im2col rows x int4
            y = self._int4_rows_conv(x)
            return _torch_layout(x, y if y is not None else self.format.conv2d(self, x), self.padding_mode)
        if route[5] is _HALF:  # float32 x, fp16 / bf16: the C kernels on the 16-bit weight (formats/half_conv.py)
            arrays, algorithm = route[7]
            return _torch_layout(x, half_conv2d_raw(x, *arrays, *route[9], algorithm=algorithm))
        if route[5] is _DEPTHWISE:  # float32 x: the C depthwise conv on the kept float weight (NCHW x)
            if x.is_contiguous():
                return depthwise_conv2d(x, *route[7], *route[9])
            return _torch_layout(x, F.conv2d(x, *route[8], *route[9], self.groups))
        packed = route[6]
        if route[5] is _DIRECT:  # float32 x, weight-only: the direct kernel on the layer's kept panels, or filled now
            if route[7] is not None:  # (panels, bias lanes, the bias read per call)
                panels, lanes, bias = route[7]
                return _torch_layout(x, direct_conv2d(x, panels, lanes, *route[9], bias=bias))
            fill_and_conv, arrays = route[8]  # a large weight: its panels filled in the same C call
            return _torch_layout(x, fill_and_conv(x, arrays, *route[9][:6]))
        if route[5] is _ONE_PIXEL:  # float32 x, weight-only 1x1 on one-pixel images: x's bytes are the rows
            if x.is_contiguous() and x.stride(3) == 1:  # (NCHW strides: torch's conv gives NCHW, as this)
                mode = weight_only_mode(x.shape[0], self.in_channels, self.out_channels)
                return torch.from_numpy(linear_int8_raw(x.numpy().reshape(x.shape[0], x.shape[1]), route[9],
                                                        mode)).view(x.shape[0], self.out_channels, 1, 1)
            return _torch_layout(x, self._packed_conv(x, *packed), self.padding_mode)
        if route[5] is _POINTWISE:  # float32 x, weight-only 1x1 at stride 1: the pixels' rows through one GEMM
            if x.is_contiguous() and x.stride(1) != 1:  # NCHW: _packed_conv's transposes and call, kept
                # (in NumPy: _nhwc_rows' and _nchw's tensor wrappers cost ~5 us a call here)
                planes, out_shape = route[9][1], route[9][2]
                threads = SETTINGS.num_threads()
                rows = transposed_planes(x.numpy().reshape(planes), threads).reshape(-1, planes[1])
                mode = weight_only_mode(rows.shape[0], planes[1], out_shape[1])
                y = linear_int8_raw(rows, route[9][0], mode).reshape(planes[0], planes[2], out_shape[1])
                return torch.from_numpy(transposed_planes(y, threads)).reshape(out_shape)
            return _torch_layout(x, self._packed_conv(x, *packed), self.padding_mode)
        if route[5] is _PACKED:
            # float32 x, dynamic, one call (NCHW x: one image pixel, stride(1) 1, may be taken as channels_last)
            if route[9] is not None and not x.requires_grad and x.is_contiguous() and x.stride(1) != 1:
                return torch.from_numpy(conv2d_int8_raw(x.numpy(), *route[9], reduce_range=self.reduce_range))
            y = _torch_layout(x, self._packed_conv(x, *packed), self.padding_mode)
            return y if x.dtype == torch.float32 else y.to(x.dtype)
        if route[5] is _FLOAT:
            w = route[7]
            b = route[8]
            if w is None:  # a large weight: dequantized per call, in this thread's buffer where it may
                info = packed[0]
                w = float_weight(self, self.weight_numel(), lambda: self._dequantized_packed(info), packed,
                                 op_inputs=(x, b), fill=lambda: ((info["out_features"], info["in_features"]),
                                                                 lambda out: self._dequantized_packed(info, out)))
            if x.dtype == torch.float32:  # (no x.float() / .to(x.dtype): ~1.5 us of no-ops per call)
                return self.conv_with(x, w, b if b is None or b.dtype == torch.float32 else b.float())
            return self.conv_with(x.float(), w, None if b is None else b.float()).to(x.dtype)
        return _torch_layout(x, self.format.conv2d(self, x), self.padding_mode)

    def _route(self, x: torch.Tensor):
        """How forward runs ``x`` (_PACKED: the int8 kernels, _FLOAT: F.conv2d on the
        dequantized weight, _FORMAT: the format's conv2d), kept per module with what it
        depends on: x's shape, dtype and device, and the stamp (kernels/stamps.py) of the
        layer's packed buffers and bias (kernel_args'), its geometry, mode and the size
        rules, checked in one C call per forward; or None when the layer has no packed
        int8 weight (the format's conv2d, nothing kept).  The float route keeps the small
        dequantized weight (float_weight's) and the bias beside it, and for a float32
        input F.conv2d's whole argument list.  A tiny conv's whole forward is ~15 us:
        the checks made once per shape here instead of per call were a third of it
        (bench_models.py, 8x8 CNNs)."""
        if takes_depthwise(x, self.in_channels, self.out_channels, self.groups, self.kernel_size2d, self.stride2d,
                           self.padding2d, self.dilation2d, self.padding_mode):
            memo = self._depthwise_route(x)
            if memo is not None:
                return memo
        if self.format.kernel_args(self) is None:
            return self._small_float_route(x)
        stamp, packed = kernel_args_stamped(self)
        route = _FORMAT
        if conv_kernel_takes(self, x, packed[0]["in_features"]):
            # "no grad to record" holds for every call that comes here: use_ops sent those away
            # (a dynamic layer whose int8 route does not pay, a stem: the direct kernel on its weight as well)
            route = _PACKED if self._packed_pays(x) else _DIRECT if self._direct_fits(x) else _FLOAT
        if route is _FLOAT:  # (the float weight never reads the column sums: one tensor less per call)
            stamp = make_stamp(self, _FLOAT_SOURCES)
        stamp += make_stamp(self, _ROUTE_SOURCES)
        w = b = direct = None
        if route is _FLOAT:
            numel = self.weight_numel()
            if numel <= layer_cache.SMALL_WEIGHT_ELEMENTS:  # (read here: tests may change it)
                w = float_weight(self, numel, lambda: self._dequantized_packed(packed[0]), packed)
            # else None: not kept by float_weight either, dequantized per call
            b = self.bias  # a Parameter or a plain tensor attribute: the stamp sees either replaced
            if (w is not None and x.dtype == torch.float32 and self.padding_mode == "zeros"
                    and (b is None or b.dtype == torch.float32)):  # (b's dtype: .data = moves data_ptr)
                direct = (w, b, self.stride2d, self.padding2d, self.dilation2d, self.groups)
        # a float32 x of a dynamic layer with numeric zero padding: _C.conv2d_int8's arguments but x, when one
        # C call takes the whole batch (no chunks: see _dynamic_conv); ~2.5 us of Python less per call
        call = None
        if (route is _PACKED and x.dtype == torch.float32 and self.activations == "dynamic"
                and self.padding_mode == "zeros"):
            pixels = self._output_pixels((1, *x.shape[1:]))
            per_image = pixels * round_up(packed[0]["in_features"], INT8_K_GROUP) * self.groups
            if (DYNAMIC_CHUNK_BYTES // max(1, per_image) >= x.shape[0]
                    or direct_applies(x.shape[1], self.groups, self.kernel_size2d, self.padding2d,
                                      self.dilation2d, packed[2][3].any())):
                call = (packed[2], (tuple(self.kernel_size2d), tuple(self.stride2d), tuple(self.padding2d),
                                    tuple(self.dilation2d), self.groups), True)
        if (route is _PACKED and x.dtype == torch.float32 and self.activations != "dynamic"
                and self.padding_mode == "zeros"):
            if self._one_pixel_1x1(x):
                # a squeeze-excitation's 1x1 conv: _packed_conv's rows and call without its ~10 us of Python
                route, call = _ONE_PIXEL, packed[1][0]
            elif self.groups == 1 and self._plain_pointwise():
                # a 1x1 conv on few pixels (a RegNet's or EfficientNet's late 1x1s): _packed_conv's transposes and
                # call without its ~15 us of Python (a third of a 440 -> 440 conv's time on 4x4 at batch 1)
                batch, channels, height, width = x.shape
                route, call = _POINTWISE, (packed[1][0], (batch, channels, height * width),
                                           (batch, self.out_channels, height, width))
        if route is _DIRECT:  # the panels: kept for a small weight (in place of its float copy), else filled per call
            b = (direct_conv2d_int8, int8_conv_arrays(self._buffers["weight_packed"], self.weight_scale,
                                                      self.weight_zero_point, self.bias, self.out_channels))
            if self.weight_numel() <= layer_cache.SMALL_WEIGHT_ELEMENTS:
                w = (*int8_conv_panels(b[1], self.out_channels, self.in_channels // self.groups, self.kernel_size2d,
                                       self.groups), live_bias(self.bias))
            call = self._direct_geometry(True)
        memo = (x.shape, x.dtype, x.is_cpu, stamp, direct, route, packed, w, b, call)
        _ROUTES[self] = memo
        return memo

    def _direct_fits(self, x: torch.Tensor, isa: Optional[str] = None) -> bool:
        """Whether an integer layer's conv (weight-only int8, int4) runs ``x`` through the direct kernel on
        its weight's panels (kernels.direct_conv): a float32 4-D CPU ``x``, zero padding given as numbers,
        a float32 bias or none, a reduction (in/groups x kh x kw) that direct_conv.short_k_fits and at most
        direct_conv.MAX_OUTPUTS output elements at the active kernel level (more for a weight torch's
        route would dequantize per call; fewer for fewer output channels per group than
        direct_conv.FEW_OUT_LANES; any number, for direct_conv.wide_any_outputs' wide convs; up to
        direct_conv.grouped_max_outputs for a grouped conv of few channels per group) and a
        zero-padded copy of ``x`` the kernel may make (half_conv.direct_pad_fits: not a padding far past
        the image): small convs, where torch's per-call costs dominate; the scalar level: never.  On the
        shapes, never a timing.  ``isa``: the kernel level (None: the active one; the traced forward
        passes its compile-time constant)."""
        bias = self.bias
        shape = x.shape
        if not all(type(size) is int for size in shape):
            if not torch.jit.is_tracing():
                return False  # symbolic sizes (export or compile with dynamic shapes): torch's conv, which guards none
            shape = tuple(int(size) for size in shape)  # (jit.trace: 0-d tensors, the example's sizes)
        if (x.dtype != torch.float32 or x.dim() != 4 or not x.is_cpu
                or self.padding_mode != "zeros" or isinstance(self.padding2d, str)
                or (bias is not None and bias.dtype != torch.float32)):
            return False
        (kh, kw), (sh, sw), (dh, dw), (ph, pw) = self.kernel_size2d, self.stride2d, self.dilation2d, self.padding2d
        out_h, out_w = conv_out_sizes(shape[2:], (kh, kw), (sh, sw), (ph, pw), (dh, dw))
        if not direct_conv.short_k_fits(self.in_channels // self.groups * kh * kw, out_h * out_w):
            return False
        outputs = shape[0] * out_h * out_w * self.out_channels
        isa = SETTINGS.isa if isa is None else isa
        if self.pointwise_on_kept_weight(shape[0] * out_h * out_w, isa):
            return False  # (a kept float weight: torch's conv on it)
        wide = direct_conv.wide_any_outputs(self.out_channels // self.groups, isa)  # (no output limit)
        limit = direct_conv.MAX_OUTPUTS.get(isa, 0)
        if self.weight_numel() > layer_cache.SMALL_WEIGHT_ELEMENTS:  # torch's conv would dequantize it per call
            limit *= direct_conv.LARGE_WEIGHT_OUTPUTS_FACTOR
        lanes = min(self.out_channels // self.groups, direct_conv.FEW_OUT_LANES)  # (few channels: the tile's lanes)
        grouped = direct_conv.grouped_max_outputs(self.groups, self.out_channels // self.groups, isa)
        return (0 < outputs and (wide or outputs * direct_conv.FEW_OUT_LANES <= limit * max(lanes, 1)
                                 or outputs <= grouped)
                and out_h > 0 and out_w > 0
                and direct_pad_fits(shape, outputs, (ph, pw)))  # (the kernel copies the image zero-padded)

    def _direct_geometry(self, tap_major: bool) -> tuple:
        """direct_conv2d's arguments after the panels."""
        return (self.out_channels, tuple(self.kernel_size2d), tuple(self.stride2d), tuple(self.padding2d),
                tuple(self.dilation2d), self.groups, tap_major)

    def _small_float_route(self, x: torch.Tensor):
        """The route of a layer without a packed int8 weight whose format runs torch's conv on the
        dequantized weight (``WeightFormat.conv2d``: int4), for a float32 CPU ``x``: where
        ``_direct_fits``, the direct kernel on panels of the dequantized weight (kept for a small
        weight, filled per call for a large int4 one: ``_int4_direct_route``); else, for a small
        weight, its kept float32 copy (float_weight's) and F.conv2d's argument list, so the call is
        fp32's own (the int4 convs of an 8x8 CNN took about 6 us a call more than fp32's through the
        format's path); each kept with the stamp of every buffer, the bias and the route's sources;
        for a format with a conv of its own (fp16 / bf16), a route that sends every call there; else
        None (the format's conv2d, nothing kept)."""
        numel = self.weight_numel()
        if type(self.format).conv2d is not WeightFormat.conv2d:  # the format's own conv (fp16 / bf16), kept as
            # the route so later calls go straight to it (~7 us of this method's Python on each call before), or
            # straight to torch's conv or the direct kernel where the format runs one on what the layer keeps
            kept = self.format.kept_conv_route(self, x)
            head = (x.shape, x.dtype, x.is_cpu, self._buffers_stamp())
            if kept is not None and kept[0] == "panels":
                memo = (*head, None, _DIRECT, None, kept[1], None, self._direct_geometry(False))
            elif kept is not None and kept[0] == "kernel":  # (arrays, algorithm), half_conv2d_raw's geometry
                memo = (*head, None, _HALF, None, kept[1], None,
                        (tuple(self.stride2d), tuple(self.padding2d), tuple(self.dilation2d), self.groups))
            else:
                memo = (*head, None if kept is None else kept[1], _FORMAT, None, None, None, None)
            _ROUTES[self] = memo
            return memo
        if x.dtype != torch.float32 or not x.is_cpu or self.padding_mode != "zeros":
            return None
        if self.int4_rows_fit(x):
            memo = (x.shape, x.dtype, x.is_cpu, self._buffers_stamp(), None, _INT4_ROWS, None, None, None, None)
            _ROUTES[self] = memo
            return memo
        direct = self._direct_fits(x)
        if numel > layer_cache.SMALL_WEIGHT_ELEMENTS:  # a large weight: nothing kept; int4's panels filled per call
            return self._int4_direct_route(x) if direct else None
        # (the direct route keeps the panels alone, in place of the float copy)
        w, b, dtype = self.format.compute_weight(self, x, numel, cache=not direct)
        if dtype != torch.float32 or w.dtype != torch.float32 or not w.is_cpu or (b is not None and b.dtype != torch.float32):
            return None
        stamp = self._buffers_stamp()
        if direct:  # the direct kernel on panels of the dequantized weight
            memo = (x.shape, x.dtype, x.is_cpu, stamp, None, _DIRECT, None,
                    (*float_conv_panels(w, b, self.groups), live_bias(self.bias if b is self.bias else None)), None,
                    self._direct_geometry(False))
            _ROUTES[self] = memo
            return memo
        direct = (w, b, self.stride2d, self.padding2d, self.dilation2d, self.groups)
        memo = (x.shape, x.dtype, x.is_cpu, stamp, direct, _FORMAT, None, w, b, None)
        _ROUTES[self] = memo
        return memo

    def _depthwise_route(self, x: torch.Tensor):
        """The route of a depthwise layer (kernels.depthwise.takes_depthwise) whose float32 weight is kept
        (a small weight: float_weight's dequantized or widened copy, every format): the C depthwise conv
        on it, or None (a weight or bias that is not float32 on the CPU)."""
        numel = self.weight_numel()
        if numel > layer_cache.SMALL_WEIGHT_ELEMENTS:  # (its float copy is not kept: made per call)
            return None
        w, b, dtype = self.format.compute_weight(self, x, numel, cache=True)
        if (dtype != torch.float32 or w.dtype != torch.float32 or not w.is_cpu
                or (b is not None and (b.dtype != torch.float32 or not b.is_cpu))):
            return None
        w = w.detach().contiguous()
        b_view = live_bias(b) if b is not None and b is self.bias else None  # (follows writes through .data)
        if b is not None and b_view is None:
            b = b.detach().contiguous()
            b_view = b.numpy()
        geometry = (tuple(self.stride2d), tuple(self.padding2d), tuple(self.dilation2d))
        memo = (x.shape, x.dtype, x.is_cpu, self._buffers_stamp(), None, _DEPTHWISE, None, (w.numpy(), b_view),
                (w, b), geometry)
        _ROUTES[self] = memo
        return memo

    def int4_rows_fit(self, x: torch.Tensor):
        """Whether an int4 layer runs ``x`` as im2col rows through the int4 Linear's call
        (:meth:`_int4_rows_conv`; the traced forward asks too): one group, zero padding given as numbers,
        a float32 4-D CPU ``x`` (any layout), a weight past ``layer_cache.SMALL_WEIGHT_ELEMENTS`` (its
        float copy is not kept: torch's conv would dequantize it per call) and few output pixels (batch x
        out_h x out_w at most out_channels / 8, as the weight-only int8 rule): the end stages of a
        classifier (6 December 2026, AMD Zen 3, 1 thread: ResNet-18's 512 -> 512 3x3 on 4x4 at batch 1
        took 0.77-0.80x fp32's time through torch's conv of the weight dequantized per call; the int4 GEMM
        on the same rows as a Linear 2.26x with int8 activations, 0.93x with float32 ones).  A bool, or
        for symbolic sizes (export / compile with dynamic shapes) the rule as a SymBool, which the traced
        forward decides per call (torch.cond) as eager does; under jit.trace, the example's sizes."""
        if (self.weight_format != "int4" or self.groups != 1 or self.padding_mode != "zeros"
                or isinstance(self.padding2d, str) or x.dtype != torch.float32 or x.dim() != 4 or not x.is_cpu
                or self.weight_numel() <= layer_cache.SMALL_WEIGHT_ELEMENTS):
            return False
        shape = x.shape
        if torch.jit.is_tracing():
            shape = tuple(int(size) for size in shape)  # (jit.trace: 0-d tensors)
        pixels = self._output_pixels(shape)
        if isinstance(pixels, int):
            return 0 < pixels and pixels * 8 <= self.out_channels
        return pixels * 8 <= self.out_channels  # (a SymBool: no guard; an empty batch's rows are none)

    def _int4_rows_conv(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The conv of a float32 ``x`` as its im2col rows (in torch's (channel, kh, kw) order, the int4
        weight's) through an int4 Linear's call (formats.int4_call.kept_int4_linear: a dynamic layer's
        rows quantized to int8 per (row, group) as a Linear's, docs/formats.md; float32 with
        ``activations=None``), NCHW out (the caller gives it x's layout); None where that call
        declines."""
        x = x.detach().contiguous()  # (a channels_last x: the same rows, so the same bits as traced)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size2d, self.stride2d, self.padding2d, self.dilation2d
        batch, channels = x.shape[0], x.shape[1]
        out_h, out_w = conv_out_sizes(x.shape[2:], (kh, kw), (sh, sw), (ph, pw), (dh, dw))
        if (kh, kw, ph, pw) == (1, 1, 0, 0):  # a 1x1: the pixels (every s-th at stride s) are the rows
            rows = _nhwc_rows(x) if (sh, sw) == (1, 1) else _pixel_rows(x, sh, sw)
        else:
            cols = F.unfold(x, (kh, kw), (dh, dw), (ph, pw), (sh, sw)).numpy().transpose(0, 2, 1)
            rows = torch.from_numpy(np.ascontiguousarray(cols).reshape(batch * out_h * out_w, channels * kh * kw))
        y = kept_int4_linear(self, rows)
        return None if y is None else _nchw(y, batch, out_h, out_w)

    def _buffers_stamp(self) -> tuple:
        """The stamp of every buffer, the bias and the route's sources (a layer without a packed weight)."""
        sources = tuple(("_buffers", name) for name in self._buffers) + (("_parameters", "bias"), (None, "bias"))
        return make_stamp(self, sources) + make_stamp(self, _ROUTE_SOURCES)

    def _int4_direct_route(self, x: torch.Tensor):
        """The direct route of an int4 layer whose weight is past SMALL_WEIGHT_ELEMENTS: its panels filled per
        call in C from the 4-bit codes (the floats of its dequantized weight: the small route's bits), where the
        format's conv dequantized it through torch (1.5-1.9x fp32's time on 64 -> 128 channels at 8x8); else
        None."""
        qdata, scale, zero = (self._buffers.get(name) for name in ("weight_qdata", "weight_scale", "weight_zero_point"))
        bias = self.bias
        if (self.weight_format != "int4" or qdata is None or scale is None or zero is None
                or not (qdata.is_cpu and scale.is_cpu and zero.is_cpu) or qdata.dtype != torch.uint8
                or scale.dtype != torch.float16 or zero.dtype != torch.uint8 or qdata.dim() != 2):
            return None
        k = self.in_channels // self.groups * self.kernel_size2d[0] * self.kernel_size2d[1]
        arrays = (qdata.contiguous().numpy(), scale.contiguous().numpy(), zero.contiguous().numpy(),
                  None if bias is None else bias.detach().numpy(), effective_group(k, self.weight_group_size))
        stamp = self._buffers_stamp()
        memo = (x.shape, x.dtype, x.is_cpu, stamp, None, _DIRECT, None, None, (direct_conv2d_int4, arrays),
                self._direct_geometry(False))
        _ROUTES[self] = memo
        return memo

    def weight_numel(self) -> int:
        """Elements of the float weight."""
        return self.out_channels * (self.in_channels // self.groups) * self.kernel_size2d[0] * self.kernel_size2d[1]

    def pointwise_on_kept_weight(self, pixels: int, isa: str) -> bool:
        """Whether this layer's conv on ``pixels`` output pixels (batch x out_h x out_w) runs torch's conv on its
        kept float32 weight at kernel level ``isa`` by direct_conv.pointwise_takes_torch (a small weight only:
        larger ones keep no float copy); the integer routes and the fp16 / bf16 one ask it alike."""
        return (self.weight_numel() <= layer_cache.SMALL_WEIGHT_ELEMENTS and direct_conv.pointwise_takes_torch(
            self.kernel_size2d, self.stride2d, self.padding2d, self.groups, pixels, isa))

    def _dequantized_packed(self, info: dict, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The float32 weight ``[out, in/groups, kh, kw]`` straight from the packed buffers
        (the values of ``dequantized_weight``, without its unpack-then-dequantize detour), in
        ``out`` (``[out, in/groups * kh * kw]`` float32) when given."""
        kh, kw = self.kernel_size2d
        # [out, (in/groups, kh, kw)], contiguous: plain strides (a permuted weight would look
        # channels-last to F.conv2d)
        return dequantized_packed(self, info, (kh, kw), out).reshape(self.out_channels, -1, kh, kw)

    def extra_repr(self) -> str:
        dilation = "" if all(d == 1 for d in self.dilation) else f"dilation={self.dilation}, "  # (as torch's)
        mode = "" if self.padding_mode == "zeros" else f"padding_mode={self.padding_mode!r}, "
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, {dilation}groups={self.groups}, {mode}" + super().extra_repr()
                + (f", activations={self.activations}" if self.format.has_activation_modes else "")
                + (", reduce_range=True" if self.reduce_range else ""))
