"""The per-channel (or per-tensor) affine integer formats, int8 and uint8:
``w ~= (weight_qdata - weight_zero_point) * weight_scale``, bit-identical to
torch.quantize_per_channel.  An int8 weight of a Linear or Conv2d is kept in the packed
layout of the int8 matmul kernels instead of ``weight_qdata`` (:mod:`mono_quant.packing`)."""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping

import torch

from ..errors import CheckpointError
from ..kernels.rows import dequantize_rows
from ..kernels.uint8 import uint8_layer_takes, uint8_linear
from ..packing import PACKED_BUFFERS, unpack_int8_linear
from ..tensor import QuantizedWeight, channel_rows, check_input, quantize_int_with_error
from .base import WeightFormat
from .checks import check_scales, first_bad, need, spec, value_at
from . import packed_linear  # packed_linear.packed_linear looked up per call (tests spy on it)
from .layer_cache import kernel_args
from .packed_linear import kernel_takes, takes_blas
from .uint8_call import kept_uint8_linear

__all__ = ["AffineIntFormat"]


class AffineIntFormat(WeightFormat):
    """int8 / uint8 with one scale and zero-point per output channel (axis 0) or per tensor.
    ``packs``: the weight of a Linear / Conv2d is packed for the int8 matmul kernels."""

    def __init__(self, qtype, packs: bool):
        super().__init__(qtype)
        self.packs = packs

    @property
    def runs_dynamic(self) -> bool:
        return self.packs  # (no uint8 kernel quantizes inputs: weight-only)

    # -- quantizing -------------------------------------------------------------------------------
    def quantize_weight(self, tensor, *, axis, group_size, symmetric, method):
        if method not in (None, "rtn"):
            raise ValueError(f"method={method!r} applies to int4 only; {self.name} uses round-to-nearest ('rtn')")
        if group_size is not None:
            raise ValueError(f"group_size is not supported for {self.name} (per-channel or per-tensor only)")
        tensor, axis = check_input(tensor, axis)
        return quantize_int_with_error(tensor, self.qtype, axis, bool(symmetric), with_error=False)[0]

    def convert(self, w: torch.Tensor, cfg, layer_type: str, measure_error: bool):
        axis = 0 if cfg.granularity == "per_channel" else None
        stored, sqnr = quantize_int_with_error(w, self.qtype, axis, cfg.symmetric_for(layer_type),
                                               with_error=measure_error)
        return stored, (sqnr if measure_error else math.nan)

    def packs_straight(self, tensor: torch.Tensor, cfg) -> bool:
        """Per-channel int8 of a 2-D CPU weight goes straight into the packed layout (what
        QuantizedLinear keeps)."""
        return self.packs and cfg.granularity == "per_channel" and tensor.dim() == 2 \
            and tensor.device.type == "cpu" and tensor.numel() > 0

    # -- a module's storage -------------------------------------------------------------------------
    def int_weight(self, module) -> torch.Tensor:
        """The integer weight in its original shape: ``weight_qdata``, or unpacked from the packed copy."""
        qdata = module._buffers.get("weight_qdata")
        if qdata is not None:
            return qdata
        return unpack_int8_linear(module.weight_packed, module.weight_packed_info, module.weight_shape,
                                  getattr(module, "groups", 1))

    def module_weight(self, module) -> QuantizedWeight:
        return QuantizedWeight(self.int_weight(module), module.weight_scale, module.weight_zero_point,
                               module.weight_axis, self.name, module.weight_symmetric, module.orig_dtype)

    def kernel_args(self, module):
        return kernel_args(module)

    def float_fill(self, module):
        """A ``weight_qdata`` (uint8, or an int8 weight kept unpacked) dequantized by the C pass that
        ``dequantize`` runs, into the caller's buffer (a large conv's weight per call: no fresh pages)."""
        qdata, scale, zero = module._buffers.get("weight_qdata"), module.weight_scale, module.weight_zero_point
        axis = getattr(module, "weight_axis", None)
        if (qdata is None or axis not in (0, None) or qdata.numel() == 0 or qdata.dim() < 2
                or not (qdata.is_cpu and scale.is_cpu and zero.is_cpu)):
            return None
        rows = channel_rows(qdata, axis)

        def fill(out: torch.Tensor) -> torch.Tensor:
            dequantize_rows(rows, scale, zero, out=out.view(rows.shape))
            return out

        return tuple(qdata.shape), fill

    # -- forward --------------------------------------------------------------------------------------
    def linear(self, module, x: torch.Tensor) -> torch.Tensor:
        """The packed int8 kernels where they take ``x`` (dynamic, or weight-only below the
        BLAS rule, packed_linear.takes_blas), else torch on the dequantized weight; a uint8
        weight streamed by its own kernel at a few rows (kernels/uint8.py)."""
        if not self.packs:  # uint8
            y = kept_uint8_linear(module, x)  # the common call, through views kept per layer
            if y is not None:
                return y
            if uint8_layer_takes(module, x):
                y = uint8_linear(x.reshape(-1, module.in_features), module.weight_qdata, module.weight_scale,
                                 module.weight_zero_point, module.bias)
                return (y if x.dim() == 2 else y.reshape(*x.shape[:-1], module.out_features)).to(x.dtype)
        y = packed_linear.dynamic_linear(module, x)  # the common dynamic call, while its kept arguments hold
        if y is None:
            y = packed_linear.weight_only_linear(module, x)  # the same for weight-only layers
        if y is not None:
            return y
        packed = kernel_args(module)
        if packed is not None and kernel_takes(x, packed[0]["in_features"]):
            x2d = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
            if module.activations is None and takes_blas(x2d.shape[0], x2d.shape[-1], module.out_features):
                # many rows, or a small narrow weight: torch's BLAS on the dequantized fp32 weight beats
                # the packed kernel (kept per layer where it is small)
                y = packed_linear.blas_linear(module, x2d, packed)
            else:
                amx = module.activations is None and packed_linear.takes_amx(x2d.shape[0], x2d.shape[-1],
                                                                             module.out_features)
                y = packed_linear.packed_linear(module, x2d, packed[1][0], amx)
            if x.dim() != 2:
                y = y.reshape(*x.shape[:-1], module.out_features)
            return y if x.dtype == torch.float32 else y.to(x.dtype)
        return super().linear(module, x)

    # -- the manifest and files ---------------------------------------------------------------------
    def check_tensors(self, symmetric, axis, group_size, shape: tuple, tensors) -> None:
        name = self.name
        need("weight" not in tensors, f"a float 'weight' in a {name} layer")
        packed = [n for n in PACKED_BUFFERS if n in tensors]
        qdata = tensors.get("weight_qdata")
        if qdata is None:
            need(len(packed) == len(PACKED_BUFFERS) and self.packs,
                 f"a {name} layer needs weight_qdata (or, for int8, all of {list(PACKED_BUFFERS)}), has "
                 f"{sorted(tensors)}")
            need(axis in (0, None), f"packed int8 weights are per output channel or per tensor, axis is {axis}")
        else:
            need(not packed, f"both weight_qdata and packed buffers {packed}")
            need(qdata.dtype == self.qtype.storage and tuple(qdata.shape) == shape,
                 f"inconsistent {name} tensors: weight_qdata is {spec(qdata)}, expected "
                 f"{str(self.qtype.storage).replace('torch.', '')}{list(shape)}")
        channels = 1 if axis is None else shape[axis]
        scale, zero_point = tensors.get("weight_scale"), tensors.get("weight_zero_point")
        need(scale is not None and zero_point is not None, "weight_scale and weight_zero_point are needed")
        need(scale.dtype == torch.float32 and scale.dim() <= 1 and scale.numel() == channels,
             f"inconsistent {name} tensors: weight_scale is {spec(scale)}, expected float32 [{channels}] "
             f"(axis {axis}, shape {list(shape)})")
        need(zero_point.dtype == torch.int32 and zero_point.dim() <= 1 and zero_point.numel() == channels,
             f"inconsistent {name} tensors: weight_zero_point is {spec(zero_point)}, expected int32 "
             f"[{channels}] (axis {axis}, shape {list(shape)})")
        check_scales(scale)
        qmin, qmax = self.qtype.qrange(False)
        if symmetric:
            sym_qmin, sym_qmax = self.qtype.qrange(True)
            expected = 0 if sym_qmin < 0 else (sym_qmin + sym_qmax + 1) // 2
            bad = first_bad(zero_point != expected)
            need(bad is None, lambda: f"weight_zero_point[{bad}] = {value_at(zero_point, bad)}: a symmetric {name} "
                                      f"zero-point is {expected}")
        else:
            bad = first_bad((zero_point < qmin) | (zero_point > qmax))
            need(bad is None, lambda: f"weight_zero_point[{bad}] = {value_at(zero_point, bad)} is outside {name}'s "
                                      f"{qmin}..{qmax}")

    def takes_packed_file_layer(self, layer: Mapping[str, Any], own: Mapping[str, torch.Tensor]) -> bool:
        """Whether a state_dict-kind file's layer holds a packed per-channel Linear weight that
        can be used as it is (no unpacking and packing again)."""
        shape = layer.get("shape", ())
        return (self.packs and layer.get("axis") == 0 and len(shape) == 2 and min(shape) >= 1
                and "weight_qdata" not in own and all(n in own for n in PACKED_BUFFERS))

    def stored_weight(self, layer: Mapping[str, Any], own: Dict[str, torch.Tensor], orig_dtype: torch.dtype,
                      name: str):
        shape = list(layer["shape"])
        if "weight_qdata" not in own and "weight_packed" in own and "weight_packed_info" in own:
            # a packed int8 layer stores only the kernels' layout: recover the plain weight
            try:
                own = {**own, "weight_qdata": unpack_int8_linear(own["weight_packed"], own["weight_packed_info"],
                                                                 shape)}
            except (ValueError, RuntimeError) as exc:
                raise CheckpointError(f"layer {name!r}: bad packed int8 weight: {exc}") from None
        need_names = ("weight_qdata", "weight_scale", "weight_zero_point")
        if any(n not in own for n in need_names):
            raise CheckpointError(f"layer {name!r}: a {self.name} layer needs tensors {list(need_names)}, has "
                                  f"{sorted(own)}")
        qdata, scale, zero_point = (own[n] for n in need_names)
        axis = layer["axis"]
        channels = 1 if axis is None else (shape[axis] if -len(shape) <= axis < len(shape) else -1)
        if (qdata.dtype != self.qtype.storage or list(qdata.shape) != shape or scale.dtype != torch.float32
                or zero_point.dtype != torch.int32 or scale.numel() != channels or zero_point.numel() != channels):
            raise CheckpointError(f"layer {name!r}: inconsistent {self.name} tensors (qdata {qdata.dtype}"
                                  f"{list(qdata.shape)}, scale {scale.dtype}{list(scale.shape)}, zero_point "
                                  f"{zero_point.dtype}{list(zero_point.shape)}, axis {axis}, shape {shape})")
        return QuantizedWeight(qdata, scale, zero_point, axis, self.name, layer["scheme"] == "symmetric", orig_dtype)
