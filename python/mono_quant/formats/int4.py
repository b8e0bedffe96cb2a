"""The group-wise int4 format: 4-bit codes packed two per byte in blocks of
``kernels.layout.INT4_BLOCK``, an fp16 scale and a u4.4 zero-point per group of
``group_size`` input columns (docs/formats.md, "INT4").  The weight type, its
quantization and the linear op are in :mod:`.int4_weight`."""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

import torch

from ..errors import CheckpointError, ConfigError
from ..kernels import int4 as q4
from ..kernels.embedding import embedding_rows
from ..kernels.layout import int4_padded_cols
from .base import WeightFormat
from .embedding_table import kept_table
from .checks import check_scales, first_bad, is_int, need, spec, value_at
from .int4_call import kept_int4_linear
from .int4_weight import INT4_BLOCK, MAX_GROUP_SIZE, Int4Weight, effective_group, int4_linear, quantize_int4, unpack_int4

__all__ = ["Int4Format"]



class Int4Format(WeightFormat):
    """int4, group-wise along the flattened input dimension (axis 0 always)."""

    streams_row_ranges = True

    # -- quantizing -------------------------------------------------------------------------------
    def quantize_weight(self, tensor, *, axis, group_size, symmetric, method):
        if axis != 0:
            raise ConfigError(f"int4 weights are grouped along the input dimension with axis=0, got axis={axis!r}")
        return quantize_int4(tensor, group_size=group_size, symmetric=bool(symmetric), method=method)[0]

    def convert(self, w: torch.Tensor, cfg, layer_type: str, measure_error: bool):
        # the SQNR is always measured: the parameter search computes the error anyway
        return quantize_int4(w, group_size=cfg.group_size, symmetric=cfg.symmetric_for(layer_type),
                             method=cfg.method, with_error=True)

    # -- a module's storage -------------------------------------------------------------------------
    def set_weight(self, module, weight) -> None:
        super().set_weight(module, weight)
        module.weight_group_size = weight.group_size

    def module_weight(self, module) -> Int4Weight:
        return Int4Weight(module.weight_qdata, module.weight_scale, module.weight_zero_point, 0, self.name,
                          module.weight_symmetric, module.orig_dtype, module.weight_group_size, module.weight_shape)

    def describe(self, module) -> str:
        return super().describe(module) + f", group_size={module.weight_group_size}"

    def float_fill(self, module):
        w = self.module_weight(module)
        if not w.qdata.is_cpu or w.qdata.numel() == 0 or math.prod(w.orig_shape) == 0:
            return None
        shape, rows, cols = tuple(w.orig_shape), w.orig_shape[0], w.cols
        return shape, lambda out: q4.q4_dequantize(w.qdata, w.scale, w.zero_point, cols, w.group,
                                                   out=out.view(rows, cols)).view(shape)

    # -- forward --------------------------------------------------------------------------------------
    def linear(self, module, x: torch.Tensor) -> torch.Tensor:
        """The packed weight streamed by the C kernels (see int4_weight.int4_linear); the
        common call through views kept per layer (int4_call)."""
        y = kept_int4_linear(module, x)
        if y is not None:
            return y
        return int4_linear(x, self.module_weight(module), module.bias,
                           int8_activations=module.activations == "dynamic")

    def embedding_rows(self, module, flat: torch.Tensor) -> torch.Tensor:
        table = kept_table(module) if flat.device.type == "cpu" else None
        if table is not None:  # the C gather (csrc/embedding.c: q4_dequantize's values)
            return embedding_rows(table, flat)
        # (index_select: indexing with a tensor copies byte by byte)
        qdata, scale, zero = (module.weight_qdata.index_select(0, flat), module.weight_scale.index_select(0, flat),
                              module.weight_zero_point.index_select(0, flat))
        group = effective_group(module.embedding_dim, module.weight_group_size)
        if qdata.device.type == "cpu":
            return q4.q4_dequantize(qdata, scale, zero, module.embedding_dim, group)
        return unpack_int4(qdata, scale, zero, module.embedding_dim, group)

    # -- the manifest and files ---------------------------------------------------------------------
    def config_group_size(self, cfg) -> Optional[int]:
        return getattr(cfg, "group_size", None)

    def check_axis(self, axis, shape) -> None:
        need(axis == 0, f"axis {axis!r}: int4 weights are grouped with axis 0")

    def check_group_size(self, group_size, saved_attr: bool) -> None:
        if not saved_attr:
            group_size = group_size or None  # 0: per channel, as a config file writes it
        need(group_size is None or (is_int(group_size, 1) and group_size % INT4_BLOCK == 0
                                    and group_size <= MAX_GROUP_SIZE),
             f"int4 group_size {group_size!r} is not None or a positive multiple of {INT4_BLOCK} up to "
             f"{MAX_GROUP_SIZE}")

    def tensor_shapes(self, shape, group_size: Optional[int]):
        """{local name: (dtype, shape)} of an int4 weight of ``shape`` (None groups: an invalid size)."""
        rows, cols = shape[0], math.prod(shape[1:])
        kpad = int4_padded_cols(cols)
        groups = -(-kpad // effective_group(cols, group_size)) if group_size is None or group_size > 0 else -1
        return {"weight_qdata": (torch.uint8, [rows, kpad // 2]), "weight_scale": (torch.float16, [rows, groups]),
                "weight_zero_point": (torch.uint8, [rows, groups])}

    def check_tensors(self, symmetric, axis, group_size, shape: tuple, tensors) -> None:
        need("weight" not in tensors, f"a float 'weight' in a {self.name} layer")
        self.check_group_size(group_size, saved_attr=False)
        extra = set(tensors) - {"weight_qdata", "weight_scale", "weight_zero_point", "bias"}
        need(not extra, f"unexpected tensors {sorted(extra)} for an int4 layer")
        for local, (dtype, tshape) in self.tensor_shapes(shape, group_size or None).items():
            t = tensors.get(local)
            need(t is not None and t.dtype == dtype and list(t.shape) == tshape,
                 f"inconsistent int4 tensors: {local} is {'missing' if t is None else spec(t)}, expected "
                 f"{str(dtype).replace('torch.', '')}{tshape} for shape {list(shape)} and group_size {group_size}")
        check_scales(tensors["weight_scale"])
        if symmetric:
            zero_point = tensors["weight_zero_point"]
            bad = first_bad(zero_point != 128)
            need(bad is None, lambda: f"weight_zero_point[{bad}] = {value_at(zero_point, bad)}: a symmetric int4 "
                                      f"zero-point is 128 (8 in u4.4)")

    def stored_weight(self, layer: Mapping[str, Any], own: Dict[str, torch.Tensor], orig_dtype: torch.dtype,
                      name: str):
        shape = list(layer["shape"])
        need_names = ("weight_qdata", "weight_scale", "weight_zero_point")
        if any(n not in own for n in need_names):
            raise CheckpointError(f"layer {name!r}: an int4 layer needs tensors {list(need_names)}, has {sorted(own)}")
        qdata, scale, zero_point = (own[n] for n in need_names)
        group_size = layer.get("group_size") or None
        for tensor, (dtype, tshape) in zip((qdata, scale, zero_point), self.tensor_shapes(shape, group_size).values()):
            if tensor.dtype != dtype or list(tensor.shape) != tshape:
                raise CheckpointError(f"layer {name!r}: inconsistent int4 tensors (qdata {qdata.dtype}"
                                      f"{list(qdata.shape)}, scale {scale.dtype}{list(scale.shape)}, zero_point "
                                      f"{zero_point.dtype}{list(zero_point.shape)}, group_size {group_size}, "
                                      f"shape {shape})")
        return Int4Weight(qdata, scale, zero_point, 0, self.name, layer["scheme"] == "symmetric", orig_dtype,
                          group_size, tuple(shape))
