"""``export_onnx(qmodel, args, path)``: a quantized model as standard ONNX that ONNX
Runtime runs, with its weights still quantized.

Route: each quantized module of a copy of the model is swapped for an export twin
holding its weight in the plain layout ONNX wants (never the kernels' packed one),
whose forward calls ``mono_quant::onnx_*`` ops; ``torch.onnx.export(dynamo=True)``
captures the model and translates those ops (``custom_translation_table``, onnxscript)
into:

- int8 dynamic Linear: ``DynamicQuantizeLinear`` + ``MatMulInteger`` (int32) + scales;
- int8 weight-only Linear / Conv2d / Conv1d: ``DequantizeLinear`` (per channel) + ``MatMul`` / ``Conv``
  (a Conv1d as a 1-D ``Conv`` on its 3-D weight, not the height-1 2-D view it runs as);
- int8 dynamic Conv2d: the activation as ``DynamicQuantizeLinear`` + ``DequantizeLinear``
  (QDQ; ONNX Runtime's ConvInteger takes no int8 weights), the weight as above;
- int4 Linear with a power-of-two group: ``com.microsoft.MatMulNBits`` (4-bit blocks,
  float zero-points: ours are fractional, u4.4); other int4 weights (per channel, convs,
  embeddings): the codes one per byte, dequantized in the graph (``Cast``, ``Sub``, ``Mul``);
- int8 / int4 Embedding: ``Gather`` of the codes and of the per-row scales, dequantized;
- fp16 / bf16 weights: stored in that dtype and ``Cast`` (plain torch ops).

ONNX's dynamic quantization is per tensor (one scale for the whole activation) where ours
is per row / per image, so dynamic int8 outputs differ from ours by quantization noise;
weight-only outputs match ours to float rounding.  Layers with ``reduce_range=True`` (7-bit
activations) are refused (NotImplementedError): ONNX has no 7-bit dynamic quantization.  Needs the ``onnx`` and ``onnxscript``
packages (``pip install mono-quant[onnx]``).
"""
from __future__ import annotations

import copy
import math
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_leaves

from .formats.int4 import Int4Format
from .formats.int4_weight import effective_group
from .module_hooks import carry_hooks
from .modules import QuantizedConv1d, QuantizedConv2d, QuantizedEmbedding, QuantizedLinear, QuantizedModule
from .torch_compat import weight_view

__all__ = ["export_onnx", "onnx_twin"]

_LIB = torch.library.Library("mono_quant", "FRAGMENT")

# -- the export ops: definitions with a torch reference (the same math as the ONNX ops) -----------------------

_LIB.define("onnx_dequantize(Tensor q, Tensor scale, Tensor zero_point, int axis) -> Tensor")


def _dequantize(q, scale, zero_point, axis):
    shape = [1] * q.dim()
    if scale.dim():
        shape[axis] = -1
    return (q.float() - zero_point.float().reshape(shape)) * scale.reshape(shape)


_LIB.impl("onnx_dequantize", _dequantize, "CompositeExplicitAutograd")
torch.library.register_fake("mono_quant::onnx_dequantize",
                            lambda q, scale, zero_point, axis: q.new_empty(q.shape, dtype=torch.float32), lib=_LIB)


def _dynamic_quantize(x):
    """ONNX DynamicQuantizeLinear: uint8, one asymmetric scale for the tensor (range holds 0)."""
    lo, hi = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero_point = torch.clamp(torch.round(-lo / scale), 0, 255)
    return torch.clamp(torch.round(x / scale) + zero_point, 0, 255), scale, zero_point


_LIB.define("onnx_fake_quantize_dynamic(Tensor x) -> Tensor")


def _fake_quantize_dynamic(x):
    q, scale, zero_point = _dynamic_quantize(x)
    return (q - zero_point) * scale


_LIB.impl("onnx_fake_quantize_dynamic", _fake_quantize_dynamic, "CompositeExplicitAutograd")
torch.library.register_fake("mono_quant::onnx_fake_quantize_dynamic", lambda x: torch.empty_like(x), lib=_LIB)

_LIB.define("onnx_linear_dynamic(Tensor x, Tensor weight_t, Tensor scale, Tensor zero_point, Tensor? bias) -> Tensor")


def _linear_dynamic(x, weight_t, scale, zero_point, bias):
    q, x_scale, x_zero_point = _dynamic_quantize(x)
    acc = (q - x_zero_point) @ (weight_t.float() - zero_point.float())
    y = acc * (x_scale * scale)
    return y if bias is None else y + bias


_LIB.impl("onnx_linear_dynamic", _linear_dynamic, "CompositeExplicitAutograd")
torch.library.register_fake(
    "mono_quant::onnx_linear_dynamic",
    lambda x, weight_t, scale, zero_point, bias: x.new_empty((*x.shape[:-1], weight_t.shape[1])), lib=_LIB)

_LIB.define("onnx_dequantize_int4(Tensor codes, Tensor scale, Tensor zero_point, int cols, int[] shape) -> Tensor")


def _dequantize_int4(codes, scale, zero_point, cols, shape):
    w = (codes.float() - zero_point) * scale  # [rows, groups, group]
    return w.reshape(codes.shape[0], -1)[:, :cols].reshape(shape)


_LIB.impl("onnx_dequantize_int4", _dequantize_int4, "CompositeExplicitAutograd")
torch.library.register_fake("mono_quant::onnx_dequantize_int4",
                            lambda codes, scale, zero_point, cols, shape: codes.new_empty(shape, dtype=torch.float32),
                            lib=_LIB)

_LIB.define("onnx_matmul_nbits(Tensor x, Tensor blocks, Tensor scale, Tensor zero_point, Tensor? bias, int K, "
            "int N, int block_size) -> Tensor")


def _matmul_nbits(x, blocks, scale, zero_point, bias, K, N, block_size):
    low, high = blocks & 15, blocks >> 4
    codes = torch.stack([low, high], dim=-1).reshape(N, -1, block_size).float()  # byte i: codes 2i, 2i+1
    w = ((codes - zero_point.reshape(N, -1, 1)) * scale.reshape(N, -1, 1)).reshape(N, -1)[:, :K]
    return F.linear(x, w, bias)


_LIB.impl("onnx_matmul_nbits", _matmul_nbits, "CompositeExplicitAutograd")
torch.library.register_fake(
    "mono_quant::onnx_matmul_nbits",
    lambda x, blocks, scale, zero_point, bias, K, N, block_size: x.new_empty((*x.shape[:-1], N)), lib=_LIB)


# -- the export twins of the quantized modules ----------------------------------------------------------------

def _bias(module) -> Optional[torch.Tensor]:
    return None if module.bias is None else module.bias.detach().float().clone()


def _int8_parts(module):
    """(codes in the float weight's shape, scale, zero-point in the codes' dtype, axis) for DequantizeLinear."""
    qw = module.quantized_weight()
    qdata = qw.qdata.detach().clone()
    if qw.axis is None:
        return qdata, qw.scale.detach().float().reshape(()), qw.zero_point.detach().to(qdata.dtype).reshape(()), 0
    if qw.axis != 0:
        raise NotImplementedError(f"ONNX export of an int8 weight quantized along axis {qw.axis}: only axis 0 "
                                  f"(output channels) or per tensor")
    n = qdata.shape[0]
    return (qdata, qw.scale.detach().float().expand(n).contiguous(),
            qw.zero_point.detach().to(qdata.dtype).expand(n).contiguous(), 0)


def _int4_parts(module):
    """Codes one per byte ``[rows, groups, group]`` (padded), and float scale / zero-point ``[rows, groups, 1]``."""
    qw = module.quantized_weight()
    rows, cols = qw.orig_shape[0], qw.cols
    group = effective_group(cols, qw.group_size)
    blocks = qw.qdata.detach().reshape(rows, -1, 16)
    codes = torch.cat([blocks & 15, blocks >> 4], dim=2).reshape(rows, -1)  # byte j: codes j and j + 16
    groups = qw.scale.shape[1]
    codes = F.pad(codes, (0, groups * group - codes.shape[1])).reshape(rows, groups, group).contiguous()
    scale = qw.scale.detach().float().reshape(rows, groups, 1).contiguous()
    zero_point = (qw.zero_point.detach().float() / 16.0).reshape(rows, groups, 1).contiguous()
    return codes, scale, zero_point, cols, group


# export_onnx's integer_matmul, for the twins built during one export
_INTEGER_MATMUL: ContextVar[str] = ContextVar("mono_quant_integer_matmul", default="u8u8")
INTEGER_MATMULS = ("u8u8", "u8s8")


def _integer_matmul_weights(q: torch.Tensor, zero_point: torch.Tensor):
    """Under integer_matmul="u8u8" (the default), int8 codes and zero-points as uint8, both
    shifted by 128: the same ``q - zero_point``; otherwise (uint8 codes, "u8s8") as they are.
    ONNX Runtime runs MatMulInteger with an int8 B (U8S8) on x86 CPUs without VNNI (AVX2,
    AVX-512 before Cascade Lake) with VPMADDUBSW, which saturates a pair of products at
    32767: a Linear exported that way lost 25 dB of SQNR on an AVX2 CPU (qemu Haswell). Its
    U8U8 kernels widen to 16 bits first and never saturate."""
    if q.dtype != torch.int8 or _INTEGER_MATMUL.get() != "u8u8":
        return q, zero_point
    return ((q.to(torch.int16) + 128).to(torch.uint8),
            (zero_point.to(torch.int16) + 128).to(torch.uint8))


class _Twin(nn.Module):
    """``.weight``: the quantized module's view (torch_compat), so code that inspects it
    (shape, dtype; nn.TransformerEncoderLayer's fast-path test) sees what eager sees."""

    def __init__(self, module):
        super().__init__()
        self._source = (module,)  # a tuple: not a submodule, its buffers stay out of the graph

    @property
    def weight(self):
        return weight_view(self._source[0])


class _OnnxLinear(_Twin):
    def __init__(self, module):
        super().__init__(module)
        self.out_features = module.out_features
        self.register_buffer("bias", _bias(module))
        if isinstance(module.format, Int4Format):
            codes, scale, zero_point, cols, group = _int4_parts(module)
            self.cols, self.group = cols, group
            if group >= 16 and group & (group - 1) == 0:  # MatMulNBits: power-of-two blocks of at least 16
                self.mode = "nbits"
                pairs = codes.reshape(codes.shape[0], codes.shape[1], group // 2, 2)
                self.register_buffer("blocks", (pairs[..., 0] | (pairs[..., 1] << 4)).contiguous())
                self.register_buffer("scale", scale.reshape(-1))
                self.register_buffer("zero_point", zero_point.reshape(-1))
            else:
                self.mode = "int4"
                self.register_buffer("codes", codes)
                self.register_buffer("scale", scale)
                self.register_buffer("zero_point", zero_point)
            return
        q, scale, zero_point, axis = _int8_parts(module)
        self.mode = "dynamic" if module.activations == "dynamic" else "weight_only"
        if self.mode == "dynamic":  # MatMulInteger's B is [K, N], zero-point per column
            q = q.t().contiguous()
            q, zero_point = _integer_matmul_weights(q, zero_point)
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point)

    def forward(self, x):
        ops = torch.ops.mono_quant
        if self.mode == "dynamic":
            return ops.onnx_linear_dynamic(x, self.q, self.scale, self.zero_point, self.bias)
        if self.mode == "nbits":
            return ops.onnx_matmul_nbits(x, self.blocks, self.scale, self.zero_point, self.bias, self.cols,
                                         self.out_features, self.group)
        if self.mode == "int4":
            w = ops.onnx_dequantize_int4(self.codes, self.scale, self.zero_point, self.cols,
                                         [self.out_features, self.cols])
        else:
            w = ops.onnx_dequantize(self.q, self.scale, self.zero_point, 0)
        return F.linear(x, w, self.bias)


class _OnnxConv2d(_Twin):
    """A QuantizedConv2d's twin, and a QuantizedConv1d's: that one runs ``F.conv1d`` with the
    float layer's 1-D geometry on a 3-D weight (the height-1 view it is stored as would take
    the ``[N, C, L]`` input for an unbatched ``[C, H, W]`` one: wrong numbers, or no export)."""

    def __init__(self, module):
        super().__init__(module)
        self.one_d = isinstance(module, QuantizedConv1d)
        if self.one_d:  # nn.Conv1d's own geometry
            _, stride, padding, dilation = module.float_geometry()
        else:
            stride, padding, dilation = module.stride2d, module.padding2d, module.dilation2d
        self.stride, self.padding, self.dilation = copy.copy(stride), copy.copy(padding), copy.copy(dilation)
        for name in ("groups", "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(self, name, copy.copy(getattr(module, name)))
        if self.one_d and self._reversed_padding_repeated_twice is not None:
            self._reversed_padding_repeated_twice = list(self._reversed_padding_repeated_twice[:2])  # (left, right)
        self.register_buffer("bias", _bias(module))
        self.shape = list(module.weight_shape)
        if self.one_d:
            self.shape = list(module.float_weight_shape(self.shape))  # [out, in/groups, k]
        self.dynamic = module.activations == "dynamic" and not isinstance(module.format, Int4Format)
        if isinstance(module.format, Int4Format):
            codes, scale, zero_point, cols, _ = _int4_parts(module)
            self.cols = cols
            self.register_buffer("codes", codes)
        else:
            self.cols = None
            q, scale, zero_point, _ = _int8_parts(module)
            q = q.reshape(self.shape)  # (a Conv1d's codes: [out, in/groups, k])
            if self.dynamic:  # (ONNX Runtime may fuse a QDQ conv into an integer one)
                q, zero_point = _integer_matmul_weights(q, zero_point)
            self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point)

    def forward(self, x):
        ops = torch.ops.mono_quant
        if self.cols is not None:
            w = ops.onnx_dequantize_int4(self.codes, self.scale, self.zero_point, self.cols, self.shape)
        else:
            w = ops.onnx_dequantize(self.q, self.scale, self.zero_point, 0)
        if self.dynamic:
            x = ops.onnx_fake_quantize_dynamic(x)
        conv = F.conv1d if self.one_d else F.conv2d
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv(x, w, self.bias, self.stride, 0, self.dilation, self.groups)
        return conv(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _OnnxEmbedding(_Twin):
    def __init__(self, module):
        super().__init__(module)
        self.orig_dtype = module.orig_dtype
        self.dim = module.embedding_dim
        if isinstance(module.format, Int4Format):
            codes, scale, zero_point, cols, _ = _int4_parts(module)
            self.int4 = True
            self.register_buffer("q", codes)
        else:
            q, scale, zero_point, _ = _int8_parts(module)
            self.int4 = False
            self.register_buffer("q", q)
            scale, zero_point = scale.reshape(-1, 1), zero_point.reshape(-1, 1)
            if scale.shape[0] != q.shape[0]:  # per tensor: one scale for every row, not one per index
                rows = q.shape[0]
                scale, zero_point = scale.expand(rows, 1).contiguous(), zero_point.expand(rows, 1).contiguous()
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point)

    def forward(self, indices):
        q, scale, zero_point = self.q[indices], self.scale[indices], self.zero_point[indices]
        rows = (q.float() - zero_point.float()) * scale
        if self.int4:
            rows = rows.reshape(*indices.shape, -1)[..., :self.dim]
        return rows.to(self.orig_dtype)


def onnx_twin(module: nn.Module) -> Optional[nn.Module]:
    """The export twin of one quantized module (None: exported as it is, e.g. fp16 / bf16)."""
    if not isinstance(module, QuantizedModule) or not module.format.integer:
        return None
    if getattr(module, "reduce_range", False) and module.activations == "dynamic":
        # ONNX's DynamicQuantizeLinear is 8-bit only: the graph would compute other numbers than the layer
        raise NotImplementedError(
            f"ONNX export of a {type(module).__name__} with reduce_range=True (7-bit dynamic activations) is not "
            "supported: ONNX's DynamicQuantizeLinear has no 7-bit form.  Call set_reduce_range(False) on its layers "
            "(or quantize without reduce_range) before exporting")
    if isinstance(module, QuantizedLinear):
        return _OnnxLinear(module)
    if isinstance(module, QuantizedConv2d):
        return _OnnxConv2d(module)
    if isinstance(module, QuantizedEmbedding):
        return _OnnxEmbedding(module)
    raise NotImplementedError(f"ONNX export of {type(module).__name__} is not supported yet")


def _twinned(model: nn.Module) -> nn.Module:
    twin = onnx_twin(model)
    if twin is not None:
        carry_hooks(model, twin)  # a hook on the layer is part of what the model computes
        return twin
    model = copy.copy(model)  # shallow: only the module tree is rebuilt; float weights are shared, not copied
    model._modules = dict(model._modules)
    for name, child in model._modules.items():
        if child is not None:
            model._modules[name] = _twinned(child)
    return model


# -- the translations to ONNX (onnxscript) --------------------------------------------------------------------

_FLOAT = 1  # onnx.TensorProto.FLOAT


def _matmul_nbits_schema():
    """ONNX Runtime's com.microsoft MatMulNBits (contrib op: onnx has no schema for it),
    as far as this export uses it: float A / scales / zero-points, 4-bit blocks in uint8."""
    from onnx.defs import OpSchema

    param, optional = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    return OpSchema(
        "MatMulNBits", "com.microsoft", 1,
        inputs=[param("A", "T1"), param("B", "T2"), param("scales", "T1"),
                param("zero_points", "T1", param_option=optional)],
        outputs=[param("Y", "T1")],
        type_constraints=[("T1", ["tensor(float)"], ""), ("T2", ["tensor(uint8)"], "")],
        attributes=[OpSchema.Attribute(name, OpSchema.AttrType.INT, "") for name in ("K", "N", "bits", "block_size")])


def _translation_table():
    try:
        from onnxscript import opset21 as op
        from onnxscript.values import Op, Opset
    except ImportError as error:
        raise ImportError("export_onnx needs the onnx and onnxscript packages: pip install onnx onnxscript "
                          "(or mono-quant[onnx])") from error
    matmul_nbits_op = Op(Opset("com.microsoft", 1), "MatMulNBits", _matmul_nbits_schema())

    def dequantize(q, scale, zero_point, axis):
        return op.DequantizeLinear(q, scale, zero_point, axis=axis)

    def fake_quantize_dynamic(x):
        q, scale, zero_point = op.DynamicQuantizeLinear(x)
        return op.DequantizeLinear(q, scale, zero_point)

    def linear_dynamic(x, weight_t, scale, zero_point, bias):
        q, x_scale, x_zero_point = op.DynamicQuantizeLinear(x)
        acc = op.MatMulInteger(q, weight_t, x_zero_point, zero_point)
        y = op.Mul(op.Cast(acc, to=_FLOAT), op.Mul(x_scale, scale))
        return y if bias is None else op.Add(y, bias)

    def dequantize_int4(codes, scale, zero_point, cols, shape):
        w = op.Mul(op.Sub(op.Cast(codes, to=_FLOAT), zero_point), scale)
        w = op.Reshape(w, op.Constant(value_ints=[codes.shape[0], -1]))
        w = op.Slice(w, op.Constant(value_ints=[0]), op.Constant(value_ints=[cols]), op.Constant(value_ints=[1]))
        return op.Reshape(w, op.Constant(value_ints=list(shape)))

    def matmul_nbits(x, blocks, scale, zero_point, bias, K, N, block_size):
        y = matmul_nbits_op(x, blocks, scale, zero_point, K=K, N=N, bits=4, block_size=block_size)
        return y if bias is None else op.Add(y, bias)

    def half_linear(x, weight, bias):  # an fp16 / bf16 Linear's kernel op: the weight stored 16-bit, Cast
        y = op.MatMul(x, op.Transpose(op.Cast(weight, to=_FLOAT), perm=[1, 0]))
        return y if bias is None else op.Add(y, op.Cast(bias, to=_FLOAT))

    def half_conv2d(x, weight, bias, stride, padding, dilation, groups):  # an fp16 / bf16 Conv2d's kernel op
        b = None if bias is None else op.Cast(bias, to=_FLOAT)
        return op.Conv(x, op.Cast(weight, to=_FLOAT), b, strides=list(stride), pads=[*padding, *padding],
                       dilations=list(dilation), group=groups)

    def depthwise_conv2d(x, weight, bias, stride, padding, dilation, groups):  # the C depthwise conv's op: a Conv
        return op.Conv(x, weight, bias, strides=list(stride), pads=[*padding, *padding], dilations=list(dilation),
                       group=groups)

    ops = torch.ops.mono_quant
    return {ops.onnx_dequantize.default: dequantize, ops.onnx_fake_quantize_dynamic.default: fake_quantize_dynamic,
            ops.onnx_linear_dynamic.default: linear_dynamic, ops.onnx_dequantize_int4.default: dequantize_int4,
            ops.onnx_matmul_nbits.default: matmul_nbits, ops.half_linear.default: half_linear,
            ops.half_conv2d.default: half_conv2d, ops.depthwise_conv2d.default: depthwise_conv2d}


def _refuse_half_models(model: nn.Module) -> None:
    """The twins compute in float32 (ONNX Runtime's integer ops and MatMulNBits return it): a model
    switched to float16 / bfloat16 would be written with ops whose types disagree."""
    for name, m in model.named_modules():
        dtype = getattr(m, "orig_dtype", None) if isinstance(m, QuantizedModule) else None
        if dtype is not None and dtype != torch.float32:
            raise NotImplementedError(f"export_onnx writes float32 models; layer {name or '<root>'!r} computes in "
                                      f"{str(dtype).replace('torch.', '')} (after .half() / .to()): export a "
                                      f"float32 copy (model.float()) and let the runtime cast")


def _refuse_half_inputs(args: Tuple[Any, ...], kwargs: Optional[dict] = None) -> None:
    """The same for a float16 / bfloat16 example input (the layers accept it, and give it back,
    in eager mode): the graph's quantize and matmul ops would get types they do not take."""
    for leaf in tree_leaves((args, kwargs or {})):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.dtype != torch.float32:
            raise NotImplementedError(f"export_onnx writes float32 models; an example input is "
                                      f"{str(leaf.dtype).replace('torch.', '')}: pass float32 inputs (x.float()) "
                                      f"and let the runtime cast")


def _refuse_static_models(model: nn.Module) -> None:
    """A static int8 model runs eagerly only (its kernels read the input's memory): say so before
    torch.onnx.export wraps the refusal in its own error."""
    from .static.compiled import CompilesAsOneOp
    for name, m in model.named_modules():
        if isinstance(m, CompilesAsOneOp):
            raise NotImplementedError(
                f"export_onnx can't write a static int8 model ({name or '<root>'!r} is a {type(m).__name__}): "
                f"it runs eagerly only; export a dynamic int8 or weight-only model "
                f"(mono_quant.quantize(model, 'int8')), or run this one with torch.compile")


def export_onnx(model: nn.Module, args: Union[torch.Tensor, Tuple[Any, ...]], path: Union[str, Path], *,
                opset_version: int = 21, dynamic_shapes=None, input_names=None, output_names=None,
                integer_matmul: str = "u8u8") -> Path:
    """Write ``model`` (a quantized model, or any model holding quantized modules) to
    ``path`` as ONNX (opset ``opset_version``, at least 21 for blocked DequantizeLinear
    semantics), traced with the example ``args`` (a tensor or a tuple).  The model is not
    modified.  ``dynamic_shapes``, ``input_names``, ``output_names``: as for
    ``torch.onnx.export``.  ``integer_matmul``: how int8 dynamic layers' weights are
    written for ONNX Runtime's integer kernels: ``"u8u8"`` (default) as uint8 shifted by
    128, exact on every CPU; ``"u8s8"`` as int8, about 2x faster in ONNX Runtime on CPUs
    with VNNI but saturating (wrong outputs, 15 dB SQNR instead of 40 on a small MLP) on
    x86 CPUs without it (AVX2: Zen 2/3, Intel before Alder Lake / Cascade Lake).  Returns
    the path.  Raises ImportError without onnx / onnxscript, NotImplementedError for a
    layer this export can't express."""
    if opset_version < 21:
        raise ValueError(f"export_onnx writes opset 21 or later (blocked DequantizeLinear), got {opset_version}")
    if integer_matmul not in INTEGER_MATMULS:
        raise ValueError(f"integer_matmul must be one of {INTEGER_MATMULS}, got {integer_matmul!r}")
    if isinstance(args, torch.Tensor):
        args = (args,)
    _refuse_static_models(model)
    _refuse_half_models(model)
    _refuse_half_inputs(args)
    table = _translation_table()
    token = _INTEGER_MATMUL.set(integer_matmul)
    try:
        twin = _twinned(model)
    finally:
        _INTEGER_MATMUL.reset(token)
    try:
        program = torch.onnx.export(twin, tuple(args), dynamo=True, opset_version=opset_version,
                                    custom_translation_table=table, dynamic_shapes=dynamic_shapes,
                                    input_names=input_names, output_names=output_names, verbose=False,
                                    optimize=False)
    except Exception as exc:  # torch.onnx's errors: a class per step of its exporter
        op = re.search(r"No ONNX function found for [^\n]*?(mono_quant\.\w+)", str(exc))
        if op is None:
            raise
        # the layers' own ops are translated; these compute a layer's .weight, which the model's
        # forward read (a tied output head: F.linear(h, emb.weight))
        raise NotImplementedError(
            f"export_onnx: the model's forward reads a quantized layer's .weight (the graph calls {op.group(1)}, "
            f"which has no ONNX form), e.g. an output head tied to a quantized embedding; keep that layer float "
            f"(quantize with exclude=[its name]) or call the layer instead of reading its weight") from exc
    _optimize(program)
    path = Path(path)
    program.save(str(path))
    return path


#: the largest input (elements) the graph optimizer's constant folding takes: shape arithmetic, not a
#: layer's weight (the default, 8192, folded the Cast / dequantize of small fp16 / int4 weights into a
#: float32 initializer: 2-8x the bytes of the format the layer was quantized to)
_FOLD_INPUT_LIMIT = 64


def _optimize(program) -> None:
    """torch.onnx.export's optimize=True (onnxscript's optimizer and its fusions), with _FOLD_INPUT_LIMIT."""
    import onnxscript.optimizer
    import onnxscript.rewriter.onnx_fusions

    onnxscript.optimizer.optimize_ir(program.model, input_size_limit=_FOLD_INPUT_LIMIT)
    onnxscript.rewriter.onnx_fusions.fuse(program.model)
