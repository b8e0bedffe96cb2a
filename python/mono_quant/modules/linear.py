"""QuantizedLinear: replaces nn.Linear."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..formats import ACTIVATION_MODES, checked_activations, format_of
from ..torch_features import autocast_enabled, autocast_off
from ..formats.layer_cache import SMALL_WEIGHT_ELEMENTS, float_weight, kernel_args
from ..formats.packed_linear import BLAS_MIN_IN_FEATURES, BLAS_MIN_ROWS, blas_min_rows, dequantized_packed, packed_linear
from ..packing import can_pack, pack_int8_linear
from ..orig_dtype import orig_dtype_of
from ..formats import traced_forward
from ..kernels.torch_library import check_jit_trace
from .input_checks import check_float_input, refuse_non_dense
from .reduce_range import ReduceRange
from .registry import QuantizedModule, register_qmodule

# the packed-int8 helpers keep their old import path here (they live in mono_quant.formats)
__all__ = ["QuantizedLinear", "ACTIVATION_MODES", "BLAS_MIN_ROWS", "BLAS_MIN_IN_FEATURES", "SMALL_WEIGHT_ELEMENTS",
           "blas_min_rows",
           "dequantized_packed", "float_weight", "kernel_args", "packed_linear"]


@register_qmodule(nn.Linear)
class QuantizedLinear(ReduceRange, QuantizedModule):
    """``y = x @ W.T + b`` with W stored as int8 (+ per-channel scale and
    zero-point) or fp16/bf16.  Takes inputs of any leading shape and floating
    dtype and returns the input's dtype.

    int8 weights are also stored packed (``weight_packed``, ``weight_colsum``,
    ``weight_packed_info``, see docs/formats.md) for the C kernels:
    ``activations="dynamic"`` quantizes each input row to int8 and multiplies
    in integers; ``activations=None`` multiplies float inputs by the weight
    dequantized in registers.  Inputs the kernels can't take (CUDA, float64,
    autograd, no packed buffers) run ``F.linear`` on the dequantized weight.
    ``reduce_range`` (set by ``quantize(..., reduce_range=True)`` or
    :meth:`set_reduce_range`): dynamic activations in 7 bits (0..127 per row
    with a zero-point) instead of 8, faster on AVX2 CPUs without VNNI.

    Built by :func:`~mono_quant.quantize` (``from_float``) or by
    :func:`~mono_quant.load`, rarely by hand: the constructor makes an empty
    layer whose buffers a state_dict fills.

    Args:
        in_features: Input features, as for nn.Linear.
        out_features: Output features, as for nn.Linear.
        weight_format: "int8", "uint8", "int4", "fp16" or "bf16".
        orig_dtype: The float weight's dtype (outputs follow the input's dtype).

    Examples:
        >>> qmodel, _ = mq.quantize(nn.Sequential(nn.Linear(512, 256)), dtype="int8")
        >>> qmodel[0]
        QuantizedLinear(weight=int8[256, 512], axis=0, symmetric=True, bias=True, activations=dynamic)
        >>> qmodel[0].set_activations(None)   # weight-only from now on
    """

    state_attrs = QuantizedModule.state_attrs + ("activations", "reduce_range")

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
        q = cls(module.in_features, module.out_features, weight_format=format_of(weight).name,
                orig_dtype=orig_dtype_of(module.weight.dtype))
        q.set_weight(weight)
        q.activations = checked_activations(q, activations, built=False)  # (a float-input format keeps it)
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
        q = cls(module.in_features, module.out_features, weight_format="int8",
                orig_dtype=orig_dtype_of(module.weight.dtype))
        q.register_buffer("weight_scale", scale)
        q.register_buffer("weight_zero_point", zero_point)
        q.weight_axis, q.weight_symmetric, q.weight_group_size = 0, bool(symmetric), None
        q.activations = checked_activations(q, activations, built=False)  # (a float-input format keeps it)
        q.set_packed(packed)
        q._set_bias(module.bias)
        q.train(module.training)
        return q

    def set_activations(self, activations: Optional[str]) -> None:
        """Choose the execution mode: "dynamic" or None (weight-only). Raises ValueError otherwise."""
        self.activations = checked_activations(self, activations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if autocast_enabled():  # every route outside autocast: the C ones and the ops never follow it
            with autocast_off(x):
                return QuantizedLinear.forward(self, x)  # (this class's, not a subclass's)
        if x.dtype is not torch.float32:  # (float32 is floating: the check can't fail, ~0.08 us a call)
            check_float_input(x, type(self).__name__)
        try:  # (free when nothing is raised: the check costs only the 0-d input)
            if traced_forward.use_ops(x, self):  # graph capture or autograd: the torch.library ops
                check_jit_trace(x, self)
                return traced_forward.linear_forward(self, x)
            return self.format.linear(self, x)
        except IndexError:
            if x.dim() == 0:  # nn.Linear's own error, where ours read x.shape[-1] of a 0-d tensor
                raise RuntimeError(f"{type(self).__name__}: the input is 0-d (a scalar): a Linear needs an "
                                   f"input of at least 1 dimension, [..., {self.in_features}]") from None
            raise
        except (TypeError, RuntimeError, NotImplementedError, ValueError):
            refuse_non_dense(x, type(self).__name__)  # (a sparse or nested input: say so)
            raise

    def extra_repr(self) -> str:
        mode = f", activations={self.activations}" if self.format.has_activation_modes else ""
        return super().extra_repr() + mode + (", reduce_range=True" if self.reduce_range else "")
