"""QuantizedLinear: replaces nn.Linear."""
from __future__ import annotations

import weakref
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import _C, kernels, torch_ops
from ..packing import can_pack, pack_int8_linear, packed_info, packed_sizes
from ..qtypes import QTYPES
from ..int4 import int4_linear
from .registry import QuantizedModule, register_qmodule

__all__ = ["QuantizedLinear", "ACTIVATION_MODES", "BLAS_MIN_ROWS", "SMALL_WEIGHT_ELEMENTS", "blas_min_rows",
           "dequantized_packed", "float_weight", "kernel_args", "packed_linear"]

# "dynamic": activations quantized to int8 per row at each call, integer
# matmul; None: weight-only (float activations x int8 weights)
ACTIVATION_MODES = ("dynamic", None)
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@register_qmodule(nn.Linear)
class QuantizedLinear(QuantizedModule):
    """``y = x @ W.T + b`` with W stored as int8 (+ per-channel scale and
    zero-point) or fp16/bf16.  Takes inputs of any leading shape and floating
    dtype and returns the input's dtype.

    int8 weights are also stored packed (``weight_packed``, ``weight_colsum``,
    ``weight_packed_info``, see docs/formats.md) for the C kernels:
    ``activations="dynamic"`` quantizes each input row to int8 and multiplies
    in integers; ``activations=None`` multiplies float inputs by the weight
    dequantized in registers.  Inputs the kernels can't take (CUDA, float64,
    autograd, no packed buffers) run ``F.linear`` on the dequantized weight.
    """

    state_attrs = QuantizedModule.state_attrs + ("activations",)

    def __init__(self, in_features: int, out_features: int, weight_format: str = "int8",
                 orig_dtype: torch.dtype = torch.float32):
        super().__init__(weight_format, (out_features, in_features), orig_dtype)
        self.in_features = in_features
        self.out_features = out_features
        self.activations: Optional[str] = "dynamic"

    def init_kwargs(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "weight_format": self.weight_format}

    @classmethod
    def from_float(cls, module: nn.Linear, weight, activations: Optional[str] = "dynamic") -> "QuantizedLinear":
        q = cls(module.in_features, module.out_features, weight_format=_format_of(weight),
                orig_dtype=module.weight.dtype)
        q.set_weight(weight)
        q.set_activations(activations)
        if can_pack(weight):
            q.set_packed(pack_int8_linear(weight))
        q._set_bias(module.bias)
        q.train(module.training)
        return q

    @classmethod
    def from_packed_int8(cls, module: nn.Linear, scale: torch.Tensor, zero_point: torch.Tensor, packed,
                         symmetric: bool, activations: Optional[str] = "dynamic") -> "QuantizedLinear":
        """The module :meth:`from_float` builds for a per-channel int8 weight, from what
        ``packing.quantize_and_pack_int8`` made of it (scale, zero-point, packed buffers):
        the plain int8 copy never exists.  Same buffers, in the same order."""
        q = cls(module.in_features, module.out_features, weight_format="int8", orig_dtype=module.weight.dtype)
        q.register_buffer("weight_scale", scale)
        q.register_buffer("weight_zero_point", zero_point)
        q.weight_axis, q.weight_symmetric, q.weight_group_size = 0, bool(symmetric), None
        q.set_activations(activations)
        q.set_packed(packed)
        q._set_bias(module.bias)
        q.train(module.training)
        return q

    def set_activations(self, activations: Optional[str]) -> None:
        """Choose the execution mode: "dynamic" or None (weight-only). Raises ValueError otherwise."""
        if activations not in ACTIVATION_MODES:
            raise ValueError(f"activations must be 'dynamic' or None (weight-only), got {activations!r}")
        self.activations = activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch_ops.use_ops(x, self):  # graph capture or autograd: the torch.library ops
            return torch_ops.linear_forward(self, x)
        fmt = self.weight_format
        if fmt == "int4":  # packed weight streamed by the C kernels
            return int4_linear(x, self.quantized_weight(), self.bias)
        if fmt in _INT_FORMATS:
            packed = kernel_args(self)
            if packed is not None and _kernel_takes(x, packed[0]["in_features"]):
                x2d = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
                if self.activations is None and x2d.shape[0] >= blas_min_rows():
                    # many rows: one dequantized fp32 weight per call and torch's BLAS beat the packed kernel
                    b = self.bias
                    y = F.linear(x2d.float(), dequantized_packed(self, packed[0]),
                                 None if b is None else b.float())
                else:
                    y = packed_linear(self, x2d, packed[1][0])
                if x.dim() != 2:
                    y = y.reshape(*x.shape[:-1], self.out_features)
                return y if x.dtype == torch.float32 else y.to(x.dtype)
            w = self.dequantized_weight(torch.float32).to(x.device)
            b = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), w, b).to(x.dtype)
        w = self._buffers["weight"]
        if w.dtype != x.dtype:
            w = w.to(x.dtype) if x.dtype != torch.float32 else float_weight(self, w.numel(), lambda: w.float())
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w.to(x.device), b)

    def extra_repr(self) -> str:
        mode = f", activations={self.activations}" if self.qtype.kind == "int" else ""
        return super().extra_repr() + mode


# integer formats the packed int8 kernels (or the dequantizing fallback) run; int4 has its own path
_INT_FORMATS = frozenset(name for name, q in QTYPES.items() if q.kind == "int" and name != "int4")


def _kernel_takes(x: torch.Tensor, in_features: int) -> bool:
    """Whether the C kernels can run this input (else: the torch fallback)."""
    if x.device.type != "cpu" or x.dtype not in _KERNEL_DTYPES or x.shape[-1] != in_features:
        return False
    if in_features > _max_in_features() or x.numel() == 0:
        return False
    return not (x.requires_grad and torch.is_grad_enabled())  # the kernels have no backward


_MAX_K = []


def _max_in_features() -> int:
    if not _MAX_K:
        _MAX_K.append(int(kernels.linear_kernels()["max_in_features"]))
    return _MAX_K[0]


# Per module, the packed weight's description and the NumPy views the C
# kernels take, built once and rebuilt when a buffer is replaced, changed in
# place (its _version moves) or moved to other memory (its data_ptr).  A weak map, not an attribute, so deepcopy
# and state_dict never see it.
_KERNEL_ARGS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ARG_BUFFERS = ("weight_packed_info", "weight_packed", "weight_colsum", "weight_scale", "weight_zero_point")


def kernel_args(module: QuantizedModule):
    """``(info, per-group argument tuples, whole-weight tuple)`` for
    ``_C.linear_int8`` / ``_C.conv2d_int8``, or None when the module has no
    usable packed weight (see packing.packed_info)."""
    bufs = module._buffers
    # data_ptr too: .data = ... or share_memory_() swap a buffer's storage in place
    try:  # (every call of every layer comes here: one list comprehension, no helper calls)
        key = tuple([(id(t), t._version, t.data_ptr()) if t is not None else None
                     for t in (*map(bufs.get, _ARG_BUFFERS), module._parameters.get("bias"))])  # bias: a Parameter
    except RuntimeError:  # a tensor made under torch.inference_mode has no version counter
        key = tuple([(id(t), _version(t), t.data_ptr()) if t is not None else None
                     for t in (*map(bufs.get, _ARG_BUFFERS), module._parameters.get("bias"))])
    cached = _KERNEL_ARGS.get(module)
    if cached is not None and cached[0] == key:
        return cached[1]
    info = packed_info(module)
    result = None if info is None else (info, *_build_args(module, info))
    _KERNEL_ARGS[module] = (key, result)
    return result


# A layer whose dequantized float32 weight is at most this many elements (256 KiB) keeps
# it, for the paths that run torch's ops on the dequantized weight: for such a weight
# the per-call dequantization (a few torch and C calls, ~10-30 us) costs as much as the
# product itself (a first conv on RGB, a small classifier head, the convs of a small
# CNN); 256 KiB per layer is little next to the activations of any model that has such
# layers.  Larger weights are dequantized per call and dropped.
SMALL_WEIGHT_ELEMENTS = 65536
_SMALL_WEIGHTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def float_weight(module: QuantizedModule, numel: int, dequantize, packed=None) -> torch.Tensor:
    """``dequantize()`` (the module's float32 weight, ``numel`` elements), kept per module
    when ``numel <= SMALL_WEIGHT_ELEMENTS`` until one of its buffers changes.  ``packed``:
    the module's kernel_args, whose identity then stands for its buffers (kernel_args
    rebuilds them when a buffer changes), else the buffers are compared as kernel_args does."""
    if numel > SMALL_WEIGHT_ELEMENTS:
        return dequantize()
    cached = _SMALL_WEIGHTS.get(module)
    if packed is not None:
        if cached is not None and cached[0] is packed:
            return cached[1]
        key = packed
    else:
        key = tuple([(name, id(t), _version(t), t.data_ptr()) for name, t in module._buffers.items()
                     if t is not None])
        if cached is not None and cached[0] == key:
            return cached[1]
    weight = dequantize()
    _SMALL_WEIGHTS[module] = (key, weight)
    return weight


def _version(t: torch.Tensor) -> int:
    """A tensor's in-place write counter; tensors made under torch.inference_mode have
    none (-1: only a replaced buffer or a moved storage then rebuilds the arguments)."""
    return -1 if t.is_inference() else t._version


def _build_args(module: QuantizedModule, info: dict):
    n, k, groups = info["out_features"], info["in_features"], info["groups"]
    packed, colsum = module.weight_packed, module.weight_colsum
    scale = module.weight_scale.detach().to(torch.float32).expand(n).contiguous()  # per-tensor: one for all
    zp = module.weight_zero_point.detach().to(torch.int32).expand(n).contiguous()
    bias = None if module.bias is None else module.bias.detach().to(torch.float32).contiguous()
    out_g = n // groups
    packed_size, colsum_size = packed_sizes(out_g, k)
    whole = (packed.numpy(), colsum.numpy(), scale.numpy(), zp.numpy(), None if bias is None else bias.numpy(), n,
             info["has_m128"])
    per_group = []
    for g in range(groups):
        lo, hi = g * out_g, (g + 1) * out_g
        per_group.append((
            packed[g * packed_size:(g + 1) * packed_size].numpy(), colsum[g * colsum_size:(g + 1) * colsum_size].numpy(),
            scale[lo:hi].numpy(), zp[lo:hi].numpy(), None if bias is None else bias[lo:hi].numpy(),
            out_g, info["has_m128"],
        ))
    return per_group, whole


def packed_linear(module: QuantizedModule, x2d: torch.Tensor, args: tuple) -> torch.Tensor:
    """float32 ``x2d @ W.T + b`` through the C kernels with one group's
    ``kernel_args``; ``module.activations`` picks dynamic int8 or weight-only."""
    if x2d.shape[-1] > 1 and x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    mode = "dynamic" if module.activations == "dynamic" else "weight_only"
    return torch.from_numpy(_C.linear_int8(kernels.to_numpy(x2d), *args, mode=mode, nthreads=torch.get_num_threads()))


# Rows (of x reshaped to 2-D) from which a weight-only int8 layer runs torch's BLAS on the
# weight dequantized once per call instead of the packed kernels, per kernel level.  A rule
# on the shape, never a timing: the same input always takes the same path.  From
# benchmarks/bench_models.py --crossover (6 BERT shapes, docs/benchmarks.md): on AVX2 the
# packed kernel passes 1.0x fp32 at 16-32 rows and reaches 1.2-1.45x, dequantize + BLAS
# (one pass writing an fp32 copy) costs 1.05-1.2x from 64 rows; on AVX-512 the packed
# kernel wins at every row count (0.5-0.7x); the scalar level was not measured.
BLAS_MIN_ROWS = {"scalar": 1 << 62, "avx2": 64, "avx512": 1 << 62}


def blas_min_rows() -> int:
    """Rows from which a weight-only int8 layer takes the dequantize + BLAS path on
    the active kernel level (see BLAS_MIN_ROWS; int4: ``int4.BLAS_MIN_ROWS``)."""
    return BLAS_MIN_ROWS[kernels.get_isa()]


def dequantized_packed(module: QuantizedModule, info: dict) -> torch.Tensor:
    """The float32 weight ``[out, K]`` of a packed int8 layer (K in the packed order:
    (kh, kw, in_channel) for a conv), unpacked and dequantized in one call each
    (the same values as ``dequantized_weight``)."""
    from ..packing import unpack_int8_rows

    n, k, groups = info["out_features"], info["in_features"], info["groups"]
    rows = unpack_int8_rows(module.weight_packed, groups, n // groups, k).reshape(n, k)
    return kernels.dequantize_rows(rows, module.weight_scale, module.weight_zero_point)


def _format_of(weight) -> str:
    from ..tensor import QuantizedWeight

    if isinstance(weight, QuantizedWeight):
        return weight.dtype
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}[weight.dtype]
