"""The C kernels as ``torch.library`` custom ops (namespace ``mono_quant``); the
quantized modules' forward written with them is ``formats/traced_forward.py``.

Each op has a schema, a CPU implementation calling ``mono_quant._C`` (defined here in
Python: no libtorch linkage), a fake implementation giving the output's shape and dtype
(for ``torch.compile``, ``torch.export`` and FakeTensor tracing) and, where the op
takes a float input, a backward to that input (``grad_x = grad_y @ W_dequantized``;
the quantized weights stay frozen, a bias gets its gradient when it requires one).

Eager calls keep the direct ``_C`` call (the dispatcher adds a few microseconds per op,
a large share of a batch-1 layer; benchmarks/bench_ecosystem.py measures it): a
module's forward takes the op route (``formats/traced_forward.py``) only when :func:`use_ops`
says so, i.e. under ``torch.compile`` / ``torch.export`` / ``torch.jit.trace``, on a
FakeTensor or other tensor subclass, or when autograd must see the layer.  Both routes
run the same kernels on the same inputs, so they give identical results (tested).
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from ..warn_site import warn_at_caller
from .. import _C
from ..torch_features import capturing
from . import reference
from .fp16 import half_linear, half_path, path_code
from .row_rules import int4_takes_blas, int8_weight_only_takes_amx, int8_weight_only_takes_blas
from .conv_shape import conv_out_sizes
from .embedding import eight_bit_table, embedding_bag, embedding_rows, int4_table, reference_embedding_bag
from .layout import PACKED_LAYOUT_VERSION, int8_packed_sizes, unpack_int8_rows
from .rows import dequantize_rows, to_numpy
from .settings import SETTINGS
from .uint8 import uint8_linear

__all__ = ["use_ops", "check_index_range", "check_jit_trace", "refuse_fx_proxy", "conv_weight", "packed_conv_grads", "refuse_functorch",
           "KERNEL_DTYPES"]

_LIB = torch.library.Library("mono_quant", "DEF")  # kept alive: the ops live as long as this object
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The ops a traced forward calls on a model moved to a GPU (or any other device), where no C kernel
# runs: the dequantizing ops and the embedding lookup, registered in torch alone for every device
# through this key (the CPU registration, the C kernels, takes precedence on the CPU).  Those torch
# versions give contiguous results, as the fakes say.  The other ops are traced for CPU inputs only
# (traced_forward.py asks where the tensors are first).
_ANY_DEVICE = "CompositeExplicitAutograd"


# use_ops' functions bound once (the same objects, which dynamo recognizes under any name):
# three attribute chains less on every eager call of every layer
_is_compiling, _is_tracing, _grad_enabled, _Tensor = (torch.compiler.is_compiling, torch._C._is_tracing,
                                                      torch.is_grad_enabled, torch.Tensor)
_transforms_active = torch._C._are_functorch_transforms_active  # (~0.06 us)


def check_index_range(flat: torch.Tensor, num_embeddings: int) -> None:
    """nn.Embedding's IndexError for an index outside [0, num_embeddings) (eager and op lookups alike;
    not on meta, which has no values, nor while a CUDA graph is captured: torch_features.capturing)."""
    if (flat.numel() and flat.device.type != "meta" and not (flat.is_cuda and capturing(flat))
            and (int(flat.min()) < 0 or int(flat.max()) >= num_embeddings)):
        raise IndexError(f"index out of range for an embedding of {num_embeddings} rows")  # as nn.Embedding


def refuse_functorch(module) -> None:
    """NotImplementedError under a ``torch.func`` transform (vmap, grad, jacrev, jacfwd, ...): the
    direct C calls read a batched tensor's missing storage ("Cannot access data pointer"), and the
    ops' backward is an autograd.Function functorch can't take.  (Plain autograd is not a transform.)"""
    if _transforms_active():
        raise NotImplementedError(
            f"{'a quantized layer' if module is None else type(module).__name__}: torch.func transforms (vmap, "
            f"grad, jacrev, jacfwd, functorch) over a quantized layer are not supported.  For gradients to the "
            f"input use plain autograd (loss.backward() or torch.autograd.grad, which work); instead of vmap, "
            f"run the batch as one call or loop; or apply the transform to the float model")


def use_ops(x: torch.Tensor, module=None) -> bool:
    """Whether a quantized module's forward must go through the ``mono_quant`` ops
    (graph capture, a tensor subclass, or autograd to record: ``x`` or the module's
    bias requires grad) instead of the direct ``_C`` calls of eager inference.
    (~0.3 us under no_grad: every eager call of every layer asks.)"""
    if _is_compiling() or _is_tracing() or type(x) is not _Tensor:
        refuse_fx_proxy(x, module)
        return True  # (type: FakeTensor in non-strict export / make_fx, functional tensors, subclasses)
    if _transforms_active():  # (vmap's batched and grad's wrapped tensors are of type Tensor)
        refuse_functorch(module)
    if not _grad_enabled():
        return False
    if x.requires_grad or module is None:
        return x.requires_grad
    bias, weight = module._parameters.get("bias"), module._buffers.get("weight")
    # (a float16/bf16 weight a user made trainable: its gradient comes from torch's own op)
    return (bias is not None and bias.requires_grad) or (weight is not None and weight.requires_grad)


def refuse_fx_proxy(x, module) -> None:
    """TypeError saying what works when torch.fx.symbolic_trace runs a quantized layer's forward (it
    stopped at the layer's first decision on its input with a bare "symbolically traced variables
    cannot be used as inputs to control flow")."""
    if isinstance(x, torch.fx.Proxy):
        layer = module if isinstance(module, str) else "a quantized layer" if module is None else type(module).__name__
        raise TypeError(
            f"{layer}: torch.fx.symbolic_trace can't trace into mono-quant's layers (their forward picks its kernels "
            f"from the input's dtype and sizes); trace with a torch.fx.Tracer whose is_leaf_module also returns True "
            f"for type(m).__module__.startswith('mono_quant.') (the graph then calls each quantized layer), or "
            f"capture with torch.export.export / torch.compile, which trace into them")


def check_jit_trace(x: torch.Tensor, module, size_routes: bool = False) -> None:
    """torch.jit.trace records one run's Python decisions as constants: an empty example bakes in
    the empty-input path (every later input then runs it), and a conv's route is chosen from the
    example's image size (another size would keep it where eager takes another, other bits)."""
    if not torch.jit.is_tracing():
        return
    if x.numel() == 0:
        raise ValueError(f"{type(module).__name__}: torch.jit.trace with an empty example records the empty-input "
                         f"path for every later input; trace with at least one row")
    if size_routes and not getattr(module, "_jit_size_warned", False):
        module._jit_size_warned = True
        size = tuple(int(s) for s in x.shape)  # (under the tracer the sizes are 0-d tensors)
        warn_at_caller(f"{type(module).__name__}: torch.jit.trace keeps the kernel route chosen for the example's "
                       f"size {size}; the traced module gives eager's results at that size only (other sizes: the "
                       f"same quantization, other rounding). torch.export and torch.compile follow each size",
                       UserWarning)


# -- packed int8 ----------------------------------------------------------------------------------------------

def _packed_geometry(info: torch.Tensor):
    """(out_features, in_features, has_m128, groups) from a ``weight_packed_info`` tensor."""
    values = info.tolist() if info.dtype == torch.int32 and info.dim() == 1 else []
    if len(values) != 5 or values[0] != PACKED_LAYOUT_VERSION:
        raise ValueError(f"weight_packed_info {values} is not a packed layout this version reads "
                         f"(version {PACKED_LAYOUT_VERSION}); re-quantize the model")
    return values[1], values[2], bool(values[3]), values[4]


# Per packed weight (keyed weakly by its small ``weight_packed_info`` tensor, which the cached
# arrays never reference, so an entry dies with its module), the NumPy arguments built for
# the last call, reused while no input tensor was replaced, written in place or moved:
# building them costs about as much as a batch-1 kernel call (benchmarks/bench_ecosystem.py).
_ARGS = WeakIdKeyDictionary()  # (tensors compare elementwise: keyed by identity)


def _tensor_key(t):
    if t is None:
        return None
    return (id(t), -1 if t.is_inference() else t._version, t.data_ptr())


def _group_args(packed, colsum, info, scale, zero_point, bias, group: int) -> tuple:
    """The ``_C.linear_int8`` weight arguments of one group (as modules/linear.py builds them);
    group -1: the whole weight (the conv kernel's arguments)."""
    key = tuple(map(_tensor_key, (packed, colsum, info, scale, zero_point, bias)))
    per_group = _ARGS.get(info)
    if per_group is None or per_group[0] != key:
        per_group = (key, {})
        _ARGS[info] = per_group
    args = per_group[1].get(group)
    if args is None:
        args = per_group[1][group] = _build_group_args(packed, colsum, info, scale, zero_point, bias, group)
    return args


def _build_group_args(packed, colsum, info, scale, zero_point, bias, group: int) -> tuple:
    n, k, has_m128, groups = _packed_geometry(info)
    if not -1 <= group < groups:
        raise ValueError(f"group {group} out of range for a weight packed in {groups} groups")
    scale = scale.detach().to(torch.float32).expand(n).contiguous()
    zero_point = zero_point.detach().to(torch.int32).expand(n).contiguous()
    bias = None if bias is None else bias.detach().to(torch.float32).contiguous()
    if group == -1 or groups == 1:
        return (packed.numpy(), colsum.numpy(), scale.numpy(), zero_point.numpy(),
                None if bias is None else bias.numpy(), n, has_m128)
    out_g = n // groups
    packed_size, colsum_size = int8_packed_sizes(out_g, k)
    lo, hi = group * out_g, (group + 1) * out_g
    return (packed[group * packed_size:(group + 1) * packed_size].numpy(),
            colsum[group * colsum_size:(group + 1) * colsum_size].numpy(),
            scale[lo:hi].numpy(), zero_point[lo:hi].numpy(), None if bias is None else bias[lo:hi].numpy(),
            out_g, has_m128)


_LIB.define("linear_int8(Tensor x, Tensor packed, Tensor colsum, Tensor info, Tensor scale, Tensor zero_point, "
            "Tensor? bias, int out_features, int group, bool dynamic, bool reduce_range=False) -> Tensor")


def _linear_int8(x, packed, colsum, info, scale, zero_point, bias, out_features, group, dynamic, reduce_range=False):
    # weight-only: eager's rule (row_rules.int8_weight_only_takes_blas) decided here, on the
    # real row count, as half_linear's: a traced graph holds this one op whatever its rows.
    # (A Linear's rule only: conv2d_int8 calls the kernel below, as the eager conv does.)
    if not dynamic and int8_weight_only_takes_blas(x.shape[0], x.shape[-1], out_features, SETTINGS.isa):
        w = _dequantize_int8_packed(packed, info, scale, zero_point, out_features, x.shape[-1], group)
        b = None if bias is None else bias[group * out_features:(group + 1) * out_features].float()
        return F.linear(x.float(), w, b)
    amx = not dynamic and int8_weight_only_takes_amx(x.shape[0], x.shape[-1], out_features, SETTINGS.isa)
    return _linear_int8_kernel(x, packed, colsum, info, scale, zero_point, bias, group, dynamic, reduce_range, amx)


def _linear_int8_kernel(x, packed, colsum, info, scale, zero_point, bias, group, dynamic, reduce_range=False,
                        amx=False):
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        x = x.contiguous()
    args = _group_args(packed, colsum, info, scale, zero_point, bias, group)
    extra = {"reduce_range": True} if dynamic and reduce_range else {}  # 7-bit activations (QuantConfig.reduce_range)
    mode = "dynamic" if dynamic else "weight_only_amx" if amx else "weight_only"
    y = _C.linear_int8(to_numpy(x), *args, mode=mode, nthreads=SETTINGS.num_threads(), **extra)
    return torch.from_numpy(y)


def _linear_int8_fake(x, packed, colsum, info, scale, zero_point, bias, out_features, group, dynamic,
                      reduce_range=False):
    return x.new_empty((x.shape[0], out_features), dtype=torch.float32)


_LIB.impl("linear_int8", _linear_int8, "CPU")
torch.library.register_fake("mono_quant::linear_int8", _linear_int8_fake, lib=_LIB)

_LIB.define("dequantize_int8_packed(Tensor packed, Tensor info, Tensor scale, Tensor zero_point, "
            "int out_features, int in_features, int group) -> Tensor")


def _dequantize_int8_packed(packed, info, scale, zero_point, out_features, in_features, group):
    n, k, _, groups = _packed_geometry(info)
    return _dequantize_packed_group(packed, scale, zero_point, groups, n // groups, k, group)


def _dequantize_packed_group(packed, scale, zero_point, groups: int, out_g: int, k: int, group: int):
    """float32 rows of group ``group`` of a packed int8 weight of ``groups`` blocks of ``out_g`` x ``k``."""
    rows = unpack_int8_rows(packed, groups, out_g, k)[group]
    n, lo = groups * out_g, group * out_g
    scale = scale.detach().to(torch.float32).expand(n)[lo:lo + out_g]
    zero_point = zero_point.detach().to(torch.int32).expand(n)[lo:lo + out_g]
    return dequantize_rows(rows, scale, zero_point)


def _dequantize_int8_packed_fake(packed, info, scale, zero_point, out_features, in_features, group):
    return packed.new_empty((out_features, in_features), dtype=torch.float32)


_LIB.impl("dequantize_int8_packed", _dequantize_int8_packed, "CPU")


def _dequantize_int8_packed_any_device(packed, info, scale, zero_point, out_features, in_features, group):
    # the geometry from the sizes, not from info: reading a GPU info tensor is a copy to the host,
    # which CUDA graph capture (torch.compile's mode="reduce-overhead") refuses; the buffers were
    # checked against info where they were made or loaded
    groups = max(1, packed.numel() // int8_packed_sizes(out_features, in_features)[0])
    return _dequantize_packed_group(packed, scale, zero_point, groups, out_features, in_features, group).contiguous()


_LIB.impl("dequantize_int8_packed", _dequantize_int8_packed_any_device, _ANY_DEVICE)
torch.library.register_fake("mono_quant::dequantize_int8_packed", _dequantize_int8_packed_fake, lib=_LIB)


def _linear_int8_setup(ctx, inputs, output):
    x, packed, _, info, scale, zero_point, bias, out_features, group = inputs[:9]
    ctx.save_for_backward(packed, info, scale, zero_point)
    ctx.meta = (x.dtype, x.shape[-1], out_features, group, bias is not None)


def _linear_int8_backward(ctx, grad):
    packed, info, scale, zero_point = ctx.saved_tensors
    x_dtype, k, n, group, has_bias = ctx.meta
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        w = torch.ops.mono_quant.dequantize_int8_packed(packed, info, scale, zero_point, n, k, group)
        grad_x = (grad @ w).to(x_dtype)
    if has_bias and ctx.needs_input_grad[6]:
        grad_bias = grad.sum(0)
    return grad_x, None, None, None, None, None, grad_bias, None, None, None, None


torch.library.register_autograd("mono_quant::linear_int8", _linear_int8_backward, setup_context=_linear_int8_setup,
                                lib=_LIB)

_LIB.define("conv2d_int8(Tensor x, Tensor packed, Tensor colsum, Tensor info, Tensor scale, Tensor zero_point, "
            "Tensor? bias, int[] kernel_size, int[] stride, int[] padding, int[] dilation, int groups, "
            "int out_channels, bool dynamic, bool reduce_range=False) -> Tensor")

# bytes of int8 im2col rows per dynamic C call (as modules/conv.py DYNAMIC_CHUNK_BYTES)
_CONV_CHUNK_BYTES = 1 << 20


def _conv2d_int8(x, packed, colsum, info, scale, zero_point, bias, kernel_size, stride, padding, dilation, groups,
                 out_channels, dynamic, reduce_range=False):
    n, k, has_m128, packed_groups = _packed_geometry(info)
    if packed_groups != groups or n != out_channels:
        raise ValueError(f"packed weight ({n} outputs in {packed_groups} groups) does not match the conv "
                         f"({out_channels} outputs in {groups} groups)")
    batch = x.shape[0]
    out_h, out_w = conv_out_sizes(x.shape[2:], kernel_size, stride, padding, dilation)
    if dynamic:
        x = x.contiguous()
        whole = _group_args(packed, colsum, info, scale, zero_point, bias, -1)
        geometry = (tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), groups)
        per_image = out_h * out_w * (-(-k // 4) * 4) * groups
        images = max(1, _CONV_CHUNK_BYTES // max(1, per_image))
        out = torch.empty(batch, out_channels, out_h, out_w)
        out_np = out.numpy()
        for b0 in range(0, batch, images):
            out_np[b0:b0 + images] = _C.conv2d_int8(to_numpy(x[b0:b0 + images]), *whole, *geometry,
                                                    nthreads=SETTINGS.num_threads(), nchw=True,
                                                    reduce_range=reduce_range)
        return out
    (kh, kw), (sh, sw) = kernel_size, stride
    if (kh, kw, sh, sw) == (1, 1, 1, 1) and tuple(padding) == (0, 0):
        rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    else:  # im2col rows in the packed K order (group, kh, kw, channel): the same rows as modules/conv.py's
        cols = F.unfold(x, tuple(kernel_size), tuple(dilation), tuple(padding), tuple(stride))
        cols = cols.reshape(batch, groups, x.shape[1] // groups, kh * kw, -1)
        rows = cols.permute(0, 4, 1, 3, 2).reshape(-1, cols.shape[1] * cols.shape[2] * cols.shape[3])
    amx = groups == 1 and int8_weight_only_takes_amx(rows.shape[0], k, out_channels, SETTINGS.isa)  # (as eager's)
    outs = [_linear_int8_kernel(rows[:, g * k:(g + 1) * k], packed, colsum, info, scale, zero_point, bias, g, False,
                                amx=amx) for g in range(groups)]
    y = outs[0] if groups == 1 else torch.cat(outs, dim=1)
    # NCHW strides as eager's and the fake's (.contiguous() of a one-pixel result would keep the permuted ones)
    return y.new_empty((batch, out_channels, out_h, out_w)).copy_(
        y.reshape(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2))


def _conv2d_int8_fake(x, packed, colsum, info, scale, zero_point, bias, kernel_size, stride, padding, dilation,
                      groups, out_channels, dynamic, reduce_range=False):
    out_h, out_w = conv_out_sizes(x.shape[2:], kernel_size, stride, padding, dilation)
    return x.new_empty((x.shape[0], out_channels, out_h, out_w), dtype=torch.float32)


_LIB.impl("conv2d_int8", _conv2d_int8, "CPU")
torch.library.register_fake("mono_quant::conv2d_int8", _conv2d_int8_fake, lib=_LIB)


def conv_weight(packed, info, scale, zero_point, out_channels, in_per_group, kernel_size, groups):
    """The float32 conv weight [out, in/groups, kh, kw] from the packed buffers (K in (kh, kw, c) order)."""
    kh, kw = kernel_size
    k = in_per_group * kh * kw
    out_g = out_channels // groups
    parts = [torch.ops.mono_quant.dequantize_int8_packed(packed, info, scale, zero_point, out_g, k, g)
             for g in range(groups)]
    rows = parts[0] if groups == 1 else torch.cat(parts)
    if kh * kw == 1:
        return rows.reshape(out_channels, -1, 1, 1)
    return rows.reshape(out_channels, kh, kw, -1).permute(0, 3, 1, 2).contiguous()


def _conv2d_int8_setup(ctx, inputs, output):
    x, packed, _, info, scale, zero_point, bias, kernel_size, stride, padding, dilation, groups, out_channels = \
        inputs[:13]
    ctx.save_for_backward(packed, info, scale, zero_point)
    ctx.meta = (x.dtype, tuple(x.shape), tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), groups,
                out_channels, bias is not None)


def packed_conv_grads(ctx, grad, bias_index: int):
    """(grad_x, grad_bias) of a conv op on a packed int8 weight whose setup saved (packed, info, scale,
    zero_point) and _conv2d_int8_setup's meta; ``bias_index``: the bias's place among the op's inputs."""
    packed, info, scale, zero_point = ctx.saved_tensors
    x_dtype, x_shape, kernel_size, stride, padding, dilation, groups, out_channels, has_bias = ctx.meta
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        w = conv_weight(packed, info, scale, zero_point, out_channels, x_shape[1] // groups, kernel_size, groups)
        grad_x = torch.nn.grad.conv2d_input(x_shape, w, grad, stride, padding, dilation, groups).to(x_dtype)
    if has_bias and ctx.needs_input_grad[bias_index]:
        grad_bias = grad.sum((0, 2, 3))
    return grad_x, grad_bias


def _conv2d_int8_backward(ctx, grad):
    grad_x, grad_bias = packed_conv_grads(ctx, grad, 6)
    return (grad_x,) + (None,) * 5 + (grad_bias,) + (None,) * 8


torch.library.register_autograd("mono_quant::conv2d_int8", _conv2d_int8_backward, setup_context=_conv2d_int8_setup,
                                lib=_LIB)

# -- plain integer weights (not packed: uint8, per-group, ...) -----------------------------------------------

_LIB.define("dequantize_rows(Tensor q, Tensor scale, Tensor zero_point) -> Tensor")
_LIB.impl("dequantize_rows", dequantize_rows, "CPU")
_LIB.impl("dequantize_rows", lambda *args: dequantize_rows(*args).contiguous(), _ANY_DEVICE)  # (the torch twin)
torch.library.register_fake("mono_quant::dequantize_rows",
                            lambda q, scale, zero_point: q.new_empty(q.shape, dtype=torch.float32), lib=_LIB)

# uint8 Linear weights: the C kernel at a few rows, torch's op on the dequantized weight past
# U8_KERNEL_MAX_ROWS (kernels/uint8.py decides on the real row count, as eager does)
_LIB.define("uint8_linear(Tensor x, Tensor qdata, Tensor scale, Tensor zero_point, Tensor? bias) -> Tensor")
_LIB.impl("uint8_linear", uint8_linear, "CPU")
torch.library.register_fake(
    "mono_quant::uint8_linear",
    lambda x, qdata, scale, zero_point, bias: x.new_empty((x.shape[0], qdata.shape[0]), dtype=torch.float32),
    lib=_LIB)


def _uint8_linear_setup(ctx, inputs, output):
    x, qdata, scale, zero_point, bias = inputs
    ctx.save_for_backward(qdata, scale, zero_point)
    ctx.meta = (x.dtype, bias is not None)


def _uint8_linear_backward(ctx, grad):
    qdata, scale, zero_point = ctx.saved_tensors
    x_dtype, has_bias = ctx.meta
    grad_x = None
    if ctx.needs_input_grad[0]:
        # (the op, not the C call: AOTAutograd traces this backward on tensor subclasses)
        w = torch.ops.mono_quant.dequantize_rows(qdata, scale, zero_point)
        grad_x = (grad.float() @ w.to(grad.device)).to(x_dtype)
    grad_bias = grad.sum(0) if has_bias and ctx.needs_input_grad[4] else None
    return grad_x, None, None, None, grad_bias


torch.library.register_autograd("mono_quant::uint8_linear", _uint8_linear_backward,
                                setup_context=_uint8_linear_setup, lib=_LIB)

# -- int4 ---------------------------------------------------------------------------------------------------

_LIB.define("dequantize_int4(Tensor qdata, Tensor scale, Tensor zero_point, int cols, int group) -> Tensor")


def _dequantize_int4(qdata, scale, zero_point, cols, group):
    return torch.from_numpy(_C.q4_dequantize(qdata.contiguous().numpy(), to_numpy(scale.contiguous()),
                                             zero_point.contiguous().numpy(), cols, group, nthreads=SETTINGS.num_threads()))


_LIB.impl("dequantize_int4", _dequantize_int4, "CPU")


def _dequantize_int4_any_device(qdata, scale, zero_point, cols, group):
    # contiguous, as the fake says: the twin's result is a view of the padded rows (inductor's stride
    # assertion refused it on a GPU)
    return reference.q4_dequantize(qdata, scale, zero_point, cols, group).contiguous()


_LIB.impl("dequantize_int4", _dequantize_int4_any_device, _ANY_DEVICE)
torch.library.register_fake(
    "mono_quant::dequantize_int4",
    lambda qdata, scale, zero_point, cols, group: qdata.new_empty((qdata.shape[0], cols), dtype=torch.float32),
    lib=_LIB)

_LIB.define("int4_linear(Tensor x, Tensor qdata, Tensor scale, Tensor zero_point, Tensor? bias, int group, "
            "bool int8_activations) -> Tensor")


def _int4_linear(x, qdata, scale, zero_point, bias, group, int8_activations):
    # eager's row rule, decided on the real row count
    if int4_takes_blas(x.shape[0], qdata.shape[0], qdata.shape[1] * 2, group, SETTINGS.isa,
                       int8_activations, in_features=x.shape[-1]):
        w = _dequantize_int4(qdata, scale, zero_point, x.shape[-1], group)
        return F.linear(x.float(), w, None if bias is None else bias.float())
    b = None if bias is None else bias.detach().float().contiguous().numpy()
    y = _C.q4_linear(to_numpy(x.contiguous()), qdata.numpy(), to_numpy(scale), zero_point.numpy(), group, bias=b,
                     int8_activations=-1 if int8_activations else 0, nthreads=SETTINGS.num_threads())
    return torch.from_numpy(y)


def _int4_linear_fake(x, qdata, scale, zero_point, bias, group, int8_activations):
    return x.new_empty((x.shape[0], qdata.shape[0]), dtype=torch.float32)


_LIB.impl("int4_linear", _int4_linear, "CPU")
torch.library.register_fake("mono_quant::int4_linear", _int4_linear_fake, lib=_LIB)


def _int4_linear_setup(ctx, inputs, output):
    x, qdata, scale, zero_point, bias, group, _ = inputs
    ctx.save_for_backward(qdata, scale, zero_point)
    ctx.meta = (x.dtype, x.shape[-1], group, bias is not None)


def _int4_linear_backward(ctx, grad):
    qdata, scale, zero_point = ctx.saved_tensors
    x_dtype, cols, group, has_bias = ctx.meta
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        w = torch.ops.mono_quant.dequantize_int4(qdata, scale, zero_point, cols, group)
        grad_x = (grad @ w).to(x_dtype)
    if has_bias and ctx.needs_input_grad[4]:
        grad_bias = grad.sum(0)
    return grad_x, None, None, None, grad_bias, None, None


torch.library.register_autograd("mono_quant::int4_linear", _int4_linear_backward, setup_context=_int4_linear_setup,
                                lib=_LIB)

# -- embedding lookup ---------------------------------------------------------------------------------------

_LIB.define("embedding_lookup(Tensor indices, Tensor qdata, Tensor scale, Tensor zero_point, int num_embeddings, "
            "int embedding_dim, int group) -> Tensor")


def _embedding_lookup(indices, qdata, scale, zero_point, num_embeddings, embedding_dim, group,
                      dequantize_int4=_dequantize_int4):
    flat = indices.reshape(-1)
    check_index_range(flat, num_embeddings)
    if not group:  # int8 / uint8, one scale and zero-point per row: the C gather on the CPU (the same values)
        table = eight_bit_table(qdata, scale, zero_point) if flat.device.type == "cpu" else None
        rows = embedding_rows(table, flat) if table is not None else _eight_bit_rows(qdata, scale, zero_point, flat)
        return rows.reshape(*indices.shape, embedding_dim)
    # int4, group-wise along the embedding dimension (index_select: indexing with a tensor copies byte by byte)
    q, s, z = qdata.index_select(0, flat), scale.index_select(0, flat), zero_point.index_select(0, flat)
    return dequantize_int4(q, s, z, embedding_dim, group).reshape(*indices.shape, embedding_dim)


_LIB.impl("embedding_lookup", _embedding_lookup, "CPU")
_LIB.impl("embedding_lookup",
          lambda *args: _embedding_lookup(*args, dequantize_int4=_dequantize_int4_any_device).contiguous(),
          _ANY_DEVICE)
torch.library.register_fake(
    "mono_quant::embedding_lookup",
    lambda indices, qdata, scale, zero_point, num_embeddings, embedding_dim, group:
        qdata.new_empty((*indices.shape, embedding_dim), dtype=torch.float32),
    lib=_LIB)

# -- embedding bags of quantized tables (csrc/embedding.c: 8-bit codes, group 0; int4 rows, group > 0) ------

_LIB.define("embedding_bag_q(Tensor ids, Tensor offsets, Tensor? per_sample_weights, Tensor qdata, Tensor scale, "
            "Tensor zero_point, int group, int cols, int mode, int padding_idx, bool include_last_offset) -> Tensor")


def _eight_bit_rows(qdata, scale, zero_point, ids):
    """float32 rows ``ids`` of an 8-bit table in torch: ``((float)q - zp) * scale``, the C kernels' values."""
    ids = ids.reshape(-1).to(torch.int64)
    if scale.numel() == 1 and qdata.shape[0] != 1:  # one scale for the table
        s, z = scale.float().reshape(1, 1), zero_point.float().reshape(1, 1)
    else:
        s, z = scale.float().index_select(0, ids)[:, None], zero_point.float().index_select(0, ids)[:, None]
    return (qdata.index_select(0, ids).float() - z) * s


def _table_rows(qdata, scale, zero_point, group, cols, ids):
    """float32 rows ``ids`` of a quantized table in torch (8-bit: group 0; int4: its dequantize)."""
    if not group:
        return _eight_bit_rows(qdata, scale, zero_point, ids)
    ids = ids.reshape(-1).to(torch.int64)
    return _dequantize_int4_any_device(qdata.index_select(0, ids), scale.index_select(0, ids),
                                       zero_point.index_select(0, ids), cols, group)


def _c_table(qdata, scale, zero_point, group, cols):
    return int4_table(qdata, scale, zero_point, cols, group) if group else eight_bit_table(qdata, scale, zero_point)


def _embedding_bag_q(ids, offsets, per_sample_weights, qdata, scale, zero_point, group, cols, mode, padding_idx,
                     include_last_offset):
    table = _c_table(qdata, scale, zero_point, group, cols)
    if table is None or ids.device.type != "cpu":
        return _embedding_bag_q_any_device(ids, offsets, per_sample_weights, qdata, scale, zero_point, group, cols,
                                           mode, padding_idx, include_last_offset)
    return embedding_bag(table, ids, offsets, per_sample_weights, mode, padding_idx, include_last_offset)


def _embedding_bag_q_any_device(ids, offsets, per_sample_weights, qdata, scale, zero_point, group, cols, mode,
                                padding_idx, include_last_offset):
    check_index_range(ids.reshape(-1), qdata.shape[0])
    rows = _table_rows(qdata, scale, zero_point, group, cols, ids)
    return reference_embedding_bag(rows, ids, offsets, per_sample_weights, mode, padding_idx,
                                   include_last_offset).contiguous()


_LIB.impl("embedding_bag_q", _embedding_bag_q, "CPU")
_LIB.impl("embedding_bag_q", _embedding_bag_q_any_device, _ANY_DEVICE)
torch.library.register_fake(
    "mono_quant::embedding_bag_q",
    lambda ids, offsets, per_sample_weights, qdata, scale, zero_point, group, cols, mode, padding_idx,
    include_last_offset: qdata.new_empty((max(offsets.shape[0] - int(include_last_offset), 0),
                                          cols if group else qdata.shape[1]), dtype=torch.float32),
    lib=_LIB)


def _embedding_bag_q_setup(ctx, inputs, output):
    ids, offsets, per_sample_weights, qdata, scale, zero_point, group, cols, mode, padding_idx, include_last_offset = inputs
    ctx.save_for_backward(ids, offsets, qdata, scale, zero_point)
    ctx.meta = (group, cols, padding_idx, include_last_offset,
                None if per_sample_weights is None else per_sample_weights.dtype)


def _embedding_bag_q_backward(ctx, grad):
    """Only the per-sample weights get a gradient (mode sum): each id's row dotted with its bag's
    output gradient (0 for padding ids and ids past the last bag)."""
    nothing = (None,) * 11
    group, cols, padding_idx, include_last_offset, psw_dtype = ctx.meta
    if psw_dtype is None or not ctx.needs_input_grad[2]:
        return nothing
    ids, offsets, qdata, scale, zero_point = ctx.saved_tensors
    ids, offsets = ids.reshape(-1).to(torch.int64), offsets.to(torch.int64)
    count, bags = ids.numel(), grad.shape[0]
    positions = torch.arange(count, device=ids.device)
    bag_of = (torch.searchsorted(offsets, positions, right=True) - 1).clamp(0, max(bags - 1, 0))
    end = offsets[-1] if include_last_offset and offsets.numel() else torch.tensor(count, device=ids.device)
    rows = _table_rows(qdata, scale, zero_point, group, cols, ids)
    g = (grad.float().index_select(0, bag_of) * rows).sum(1) if bags else rows.new_zeros(count)
    keep = positions < end
    if padding_idx >= 0:
        keep = keep & (ids != padding_idx)
    return None, None, torch.where(keep, g, torch.zeros_like(g)).to(psw_dtype), *nothing[3:]


torch.library.register_autograd("mono_quant::embedding_bag_q", _embedding_bag_q_backward,
                                setup_context=_embedding_bag_q_setup, lib=_LIB)

# -- fp16 / bf16 weights ------------------------------------------------------------------------------------

_LIB.define("half_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
def _half_linear_cpu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    # the eager rule (fp16.half_path: tiles, panels, AMX or torch's op) decided here, on the real row
    # count: a traced graph holds this one op whatever its rows, and gives eager's path and bits at each
    path = half_path(x.shape[0], x.shape[-1], weight.shape[0], SETTINGS.isa)
    if path == "torch":
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return half_linear(x, weight, bias, panels=path_code(path))


_LIB.impl("half_linear", _half_linear_cpu, "CPU")
torch.library.register_fake(
    "mono_quant::half_linear",
    lambda x, weight, bias: x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32), lib=_LIB)


def _half_linear_setup(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(weight)
    ctx.meta = (x.dtype, bias is not None)


def _half_linear_backward(ctx, grad):
    (weight,) = ctx.saved_tensors
    x_dtype, has_bias = ctx.meta
    grad_x = (grad @ weight.float()).to(x_dtype) if ctx.needs_input_grad[0] else None
    grad_bias = grad.sum(0) if has_bias and ctx.needs_input_grad[2] else None
    return grad_x, None, grad_bias


torch.library.register_autograd("mono_quant::half_linear", _half_linear_backward, setup_context=_half_linear_setup,
                                lib=_LIB)
