"""The quantized modules' forward written with the ``mono_quant`` torch.library ops
(``kernels/torch_library.py``): what runs under ``torch.compile``, ``torch.export``,
``torch.jit.trace`` and autograd.  The same paths as the eager forward of each format,
on the same kernels, so the same results (tests/integrations/test_torch_ops.py)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..dynamo_hooks import when_dynamo_imported
from ..kernels.conv_shape import conv_out_sizes
from ..kernels.depthwise import takes_depthwise
from ..kernels.int8 import MAX_IN_FEATURES
from ..kernels.settings import SETTINGS
from ..kernels.torch_library import KERNEL_DTYPES, conv_weight, use_ops
from ..kernels.uint8 import uint8_layer_takes
from ..tensor import channel_rows, from_channel_rows
from .cast import takes_half_kernel
from . import layer_cache
from .half_conv import takes_half_conv, traced_half_conv_forward
from .int4 import Int4Format
from .int4_weight import effective_group
from .packed_linear import conv_kernel_takes

__all__ = ["use_ops", "linear_forward", "conv2d_forward", "embedding_forward", "int4_linear_forward",
           "dequantized_weight"]


# Read from C at trace time and kept as a constant of a compiled graph (dynamo can't call
# into _C): it only chooses between paths that give the same results up to rounding.  Marked
# (torch.compiler.assume_constant_result) when torch._dynamo is imported (dynamo_hooks).
def _isa() -> str:
    return SETTINGS.isa


def _int4_int8_activations() -> bool:
    return SETTINGS.int4_int8_activations


def _mark_constants() -> None:
    global _isa, _int4_int8_activations
    _isa = torch.compiler.assume_constant_result(_isa)
    _int4_int8_activations = torch.compiler.assume_constant_result(_int4_int8_activations)


when_dynamo_imported(_mark_constants)


def dequantized_weight(module, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``module.dequantized_weight(dtype)`` built from ops and torch only (traceable)."""
    if not module.format.integer:
        return module._buffers["weight"].to(dtype)
    shape = tuple(module.weight_shape)
    qdata = module._buffers.get("weight_qdata")
    if isinstance(module.format, Int4Format):
        rows = torch.ops.mono_quant.dequantize_int4(qdata, module.weight_scale, module.weight_zero_point,
                                                    math.prod(shape[1:]), _int4_group(module))
        return rows.reshape(shape).to(dtype)
    if qdata is None:  # packed int8: the packed order is (kh, kw, in) for a conv
        groups = getattr(module, "groups", 1)
        if len(shape) == 4:
            w = conv_weight(module.weight_packed, module.weight_packed_info, module.weight_scale,
                            module.weight_zero_point, shape[0], shape[1], shape[2:], groups)
        else:
            w = torch.ops.mono_quant.dequantize_int8_packed(module.weight_packed, module.weight_packed_info,
                                                            module.weight_scale, module.weight_zero_point,
                                                            shape[0], math.prod(shape[1:]), 0)
        return w.reshape(shape).to(dtype)
    axis = module.weight_axis
    rows = torch.ops.mono_quant.dequantize_rows(channel_rows(qdata, axis), module.weight_scale, module.weight_zero_point)
    return from_channel_rows(rows, qdata.shape, axis).to(dtype)


def _int4_group(module) -> int:
    return effective_group(math.prod(module.weight_shape[1:]), module.weight_group_size)


def _takes(x: torch.Tensor, module, in_features: int) -> bool:
    packed = module._buffers.get("weight_packed")
    return (packed is not None and packed.device.type == "cpu" and x.device.type == "cpu"
            and x.dtype in KERNEL_DTYPES and x.shape[-1] == in_features and in_features <= MAX_IN_FEATURES
            and x.numel() > 0)


def linear_forward(module, x: torch.Tensor) -> torch.Tensor:
    """QuantizedLinear.forward through the ops (the same paths and results as eager)."""
    bias = module.bias
    if isinstance(module.format, Int4Format):
        return int4_linear_forward(module, x)
    if not module.format.integer:
        w = module._buffers["weight"]
        # as CastFormat.linear; a weight that requires grad takes torch's op (ours give no weight gradient)
        if takes_half_kernel(x, w, _isa(), any_rows=True) and not (w.requires_grad and torch.is_grad_enabled()):
            y = torch.ops.mono_quant.half_linear(x.reshape(-1, w.shape[1]), w, bias)
            return y.reshape(*x.shape[:-1], w.shape[0])
        return F.linear(x, w.to(x.dtype).to(x.device), None if bias is None else bias.to(x.dtype))
    n, k = module.out_features, module.in_features
    if _takes(x, module, k):
        x2d = x if x.dim() == 2 else x.reshape(-1, k)
        # (weight-only past packed_linear.BLAS_MIN_ROWS rows: the op itself takes the BLAS path)
        y = torch.ops.mono_quant.linear_int8(x2d, module.weight_packed, module.weight_colsum,
                                             module.weight_packed_info, module.weight_scale,
                                             module.weight_zero_point, bias, n, 0, module.activations == "dynamic",
                                             getattr(module, "reduce_range", False))
        if x.dim() != 2:
            y = y.reshape(*x.shape[:-1], n)
        return y if x.dtype == torch.float32 else y.to(x.dtype)
    if uint8_layer_takes(module, x):  # a uint8 weight: eager's route (kernels/uint8.py), as one op
        y = torch.ops.mono_quant.uint8_linear(x.reshape(-1, k), module.weight_qdata, module.weight_scale,
                                              module.weight_zero_point, bias)
        return y.reshape(*x.shape[:-1], n).to(x.dtype)
    w = dequantized_weight(module).to(x.device)
    return F.linear(x.float(), w, None if bias is None else bias.float()).to(x.dtype)


def int4_linear_forward(module, x: torch.Tensor) -> torch.Tensor:
    """An int4 QuantizedLinear's forward through the ops (as ``int4.int4_linear``)."""
    bias = module.bias
    qdata, scale, zero_point = module.weight_qdata, module.weight_scale, module.weight_zero_point
    n, k = module.weight_shape[0], math.prod(module.weight_shape[1:])
    if x.shape[-1] != k:
        raise RuntimeError(f"input has {x.shape[-1]} features, the int4 weight expects {k}")
    if x.device.type != "cpu" or qdata.device.type != "cpu" or x.numel() == 0 or qdata.numel() == 0:
        w = dequantized_weight(module).reshape(n, k).to(x.device) if qdata.numel() else x.new_zeros((n, k)).float()
        return F.linear(x.float(), w, None if bias is None else bias.float()).to(x.dtype)
    x2 = x.reshape(-1, k)
    group = _int4_group(module)
    # (past int4_weight.BLAS_MIN_ROWS rows: the op itself takes the BLAS path)
    if x2.dtype not in (torch.float32, torch.bfloat16):
        x2 = x2.float()
    y = torch.ops.mono_quant.int4_linear(x2, qdata, scale, zero_point, bias, group,
                                         module.activations == "dynamic" and _int4_int8_activations())
    return y.reshape(*x.shape[:-1], n).to(x.dtype)


def conv2d_forward(module, x: torch.Tensor) -> torch.Tensor:
    """QuantizedConv2d.forward through the ops (the same paths and results as eager)."""
    m = module
    bias = m.bias
    if _takes_depthwise(m, x):  # eager's depthwise route (kernels.depthwise), every format
        return torch.ops.mono_quant.depthwise_conv2d(x, dequantized_weight(m), None if bias is None else bias.float(),
                                                     list(m.stride2d), list(m.padding2d), list(m.dilation2d),
                                                     m.groups)
    if not m.format.integer:
        # as CastFormat.conv2d; a weight that requires grad takes torch's conv (ours gives no weight gradient)
        if takes_half_conv(m, x, _isa()) and not (m._buffers["weight"].requires_grad and torch.is_grad_enabled()):
            return traced_half_conv_forward(m, x)
        b = None if bias is None else bias.to(x.dtype)
        return m.conv_with(x, m._buffers["weight"].to(x.dtype).to(x.device), b)
    k = m.in_channels // m.groups * m.kernel_size2d[0] * m.kernel_size2d[1]
    if conv_kernel_takes(m, x, k):
        isa = _isa()
        rule = m._packed_pays(x, isa)
        packed_pays = _decided(rule)
        if packed_pays is None:
            # sizes whose range the rule splits (export / compile with dynamic image sizes or batch): both
            # routes in the graph, the rule evaluated per call as eager does (a Python `if` would pin the
            # example's route to the range with a guard, and fail the program on the other sizes)
            # (both branches contiguous: torch.cond wants one layout, and a channels_last x gives torch's conv
            # channels_last, the packed op NCHW; the caller's _torch_layout makes the result torch's layout)
            # (flat out of the branches: torch.cond compares their strides, which for a strided conv read
            # Max(1, (H - 3) // 2 + 1) and were refused as "not a simple accumulative multiplication")
            y = torch.cond(rule, lambda x: _packed_conv(m, x).contiguous().reshape(-1),
                           lambda x: _float_conv(m, x).contiguous().reshape(-1), (x,))
            return y.view(x.shape[0], m.out_channels, *_output_sizes(m, x))
        if not packed_pays and m._direct_fits(x, isa):  # eager's direct route
            return torch.ops.mono_quant.direct_conv2d_int8(
                x, m.weight_packed, m.weight_packed_info, m.weight_scale, m.weight_zero_point, bias,
                list(m.kernel_size2d), list(m.stride2d), list(m.padding2d), list(m.dilation2d), m.groups,
                m.out_channels)
        return _packed_conv(m, x) if packed_pays else _float_conv(m, x)
    rows = _decided(m.int4_rows_fit(x))  # eager's int4 rows route: im2col rows x the int4 Linear's op
    if rows is None:  # symbolic sizes the rule's ranges do not decide: both routes, chosen per call (as above)
        # (the other branch torch's conv on the dequantized weight: the direct route's rule is not asked of
        # symbolic sizes, as eager's own rules leave them to torch's conv)
        y = torch.cond(m.int4_rows_fit(x), lambda x: _int4_rows_conv(m, x, bias).contiguous().reshape(-1),
                       lambda x: _float_conv(m, x).contiguous().reshape(-1), (x,))
        return y.view(x.shape[0], m.out_channels, *_output_sizes(m, x))
    return _int4_rows_conv(m, x, bias) if rows else _weight_conv(m, x, bias)


def _weight_conv(m, x: torch.Tensor, bias) -> torch.Tensor:
    """An integer layer's conv without a packed route: eager's direct route (int4) or torch's conv on the
    dequantized weight."""
    w = dequantized_weight(m).to(x.device)
    if m._buffers.get("weight_packed") is None and m._direct_fits(x, _isa()):  # eager's direct route (int4)
        return torch.ops.mono_quant.direct_conv2d(x, w, bias, list(m.stride2d), list(m.padding2d),
                                                  list(m.dilation2d), m.groups)
    return m.conv_with(x.float(), w, None if bias is None else bias.float()).to(x.dtype)


def _int4_rows_conv(m, x: torch.Tensor, bias) -> torch.Tensor:
    """QuantizedConv2d._int4_rows_conv through the ops: torch's unfold, the int4 Linear's op (its activations:
    int8 for a dynamic layer where the Linear's are), NCHW."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = m.kernel_size2d, m.stride2d, m.padding2d, m.dilation2d
    out_h, out_w = _output_sizes(m, x)
    rows = F.unfold(x, (kh, kw), (dh, dw), (ph, pw), (sh, sw)).transpose(1, 2).reshape(-1, x.shape[1] * kh * kw)
    y = torch.ops.mono_quant.int4_linear(rows.contiguous(), m.weight_qdata, m.weight_scale, m.weight_zero_point,
                                         bias, _int4_group(m), m.activations == "dynamic" and _int4_int8_activations())
    # (contiguous NCHW as eager's: the transposed rows would read as channels_last, which the caller keeps)
    return y.reshape(x.shape[0], out_h * out_w, m.out_channels).transpose(1, 2).contiguous().view(
        x.shape[0], m.out_channels, out_h, out_w)


def _takes_depthwise(m, x: torch.Tensor) -> bool:
    """Whether eager's forward takes the depthwise route (QuantizedConv2d._depthwise_route): its rule and a
    kept (small) weight; a 16-bit weight that requires grad keeps torch's conv (the op gives no weight
    gradient)."""
    weight = m._buffers.get("weight")
    return (takes_depthwise(x, m.in_channels, m.out_channels, m.groups, m.kernel_size2d, m.stride2d, m.padding2d,
                            m.dilation2d, m.padding_mode, _isa())
            and x.is_contiguous()  # (eager's route runs torch's conv on a channels_last x)
            and m.weight_numel() <= layer_cache.SMALL_WEIGHT_ELEMENTS
            and not (weight is not None and weight.requires_grad and torch.is_grad_enabled()))


def _decided(rule):
    """A route rule's value: a bool, or None for a rule on symbolic sizes that their ranges do not
    decide (True / False when they do: no guard, no branch)."""
    if not isinstance(rule, torch.SymBool):
        return bool(rule)
    from torch.fx.experimental.symbolic_shapes import statically_known_true
    if statically_known_true(rule):
        return True
    return False if statically_known_true(torch.sym_not(rule)) else None


def _packed_conv(m, x: torch.Tensor) -> torch.Tensor:
    """The packed int8 kernels' conv (eager's _PACKED route)."""
    if m.padding_mode != "zeros":
        x = F.pad(x, m._reversed_padding_repeated_twice, mode=m.padding_mode)
        padding = [0, 0]
    else:
        padding = list(m.padding2d)
    y = torch.ops.mono_quant.conv2d_int8(x, m.weight_packed, m.weight_colsum, m.weight_packed_info,
                                         m.weight_scale, m.weight_zero_point, m.bias, list(m.kernel_size2d),
                                         list(m.stride2d), padding, list(m.dilation2d), m.groups,
                                         m.out_channels, m.activations == "dynamic",
                                         getattr(m, "reduce_range", False))
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def _float_conv(m, x: torch.Tensor) -> torch.Tensor:
    """torch's conv on the dequantized weight (eager's _FLOAT route)."""
    bias = m.bias
    return m.conv_with(x.float(), dequantized_weight(m), None if bias is None else bias.float()).to(x.dtype)


def embedding_forward(module, indices: torch.Tensor) -> torch.Tensor:
    """QuantizedEmbedding.forward through the ops."""
    m = module
    if not m.format.integer:
        return F.embedding(indices, m._buffers["weight"]).to(m.orig_dtype)
    if indices.dtype not in (torch.int64, torch.int32):
        raise RuntimeError(f"embedding indices must be int64 or int32, got {indices.dtype}")
    group = _int4_group(m) if isinstance(m.format, Int4Format) else 0
    scale, zero_point = m.weight_scale, m.weight_zero_point
    if not group and m.weight_axis is None:  # per tensor: the op reads one scale per row
        scale, zero_point = scale.reshape(1).expand(m.num_embeddings), zero_point.reshape(1).expand(m.num_embeddings)
    elif not group and m.weight_axis != 0:  # a scale per column: no per-row op for it
        return m.format.embedding(m, indices)
    rows = torch.ops.mono_quant.embedding_lookup(indices, m.weight_qdata, scale, zero_point,
                                                 m.num_embeddings, m.embedding_dim, group)
    return rows.to(m.orig_dtype)


def _output_sizes(m, x: torch.Tensor) -> tuple:
    """(out_h, out_w) of conv ``m`` on ``x``."""
    if m.padding2d == "same":
        return x.shape[2], x.shape[3]
    pad = (0, 0) if m.padding2d == "valid" else m.padding2d
    return tuple(conv_out_sizes(x.shape[2:], m.kernel_size2d, m.stride2d, pad, m.dilation2d))
