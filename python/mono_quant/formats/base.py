"""The format object's contract: :class:`WeightFormat`.

A format is one way of storing a layer's weight (int8, int4, fp16, ...).  Its object is
the one place that knows, for that format: how a float weight is quantized (and its
error measured), which buffers a quantized module keeps and how they are checked when
read from a file, how the weight is dequantized, how a Linear / Conv2d / Embedding runs
on it (calling into :mod:`mono_quant.kernels`), and what the manifest records.  Modules,
``quantize()``, save / load and the checkpoint streamer ask the format; they never test
its name.  The methods here are the defaults the formats share; a format overrides what
it does differently.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from ..packing import PACKED_BUFFERS
from ..kernels.embedding import embedding_rows
from ..kernels.torch_library import check_index_range
from ..qtypes import QType
from .checks import is_int, need
from . import layer_cache
from .layer_cache import float_weight
from .embedding_table import kept_table

__all__ = ["WeightFormat", "ACTIVATION_MODES", "checked_activations", "INTEGER_BUFFERS", "PACKED_BUFFERS",
           "ALLOWED_LAYER_TENSORS"]

# "dynamic": activations quantized to int8 per row at each call, integer
# matmul; None: weight-only (float activations x integer weights)
ACTIVATION_MODES = ("dynamic", None)

#: an integer weight's buffers (weight_qdata is dropped where the packed copy stands in for it)
INTEGER_BUFFERS = ("weight_qdata", "weight_scale", "weight_zero_point")
#: every tensor name a quantized layer may store
ALLOWED_LAYER_TENSORS = frozenset(INTEGER_BUFFERS + PACKED_BUFFERS + ("weight", "bias"))


def checked_activations(module, activations, built: bool = True):
    """``activations`` for a Linear / Conv2d layer of ``module``'s format: ValueError unless one of
    ACTIVATION_MODES, or "dynamic" (when ``built``: asked of a layer, not its construction's
    default) for a format whose layers take float inputs (uint8, fp16, bf16), which took it and
    ran weight-only."""
    if activations not in ACTIVATION_MODES:
        raise ValueError(f"activations must be 'dynamic' or None (weight-only), got {activations!r}")
    if built and activations == "dynamic" and not module.format.runs_dynamic:
        raise ValueError(f"{type(module).__name__}: activations='dynamic' applies to int8 and int4 layers; "
                         f"{module.format.name} layers take float inputs (weight-only)")
    return activations


class WeightFormat:
    """One weight format (see the module docstring).  ``name`` is the canonical dtype name
    (``qtypes.QTYPES``), ``qtype`` its ranges and storage dtype."""

    #: stored as integers with a scale and zero-point (False: a plain cast)
    integer: bool = True
    #: whether a Linear / Conv2d of this format has activation modes (``ACTIVATION_MODES``)
    has_activation_modes: bool = True
    #: the buffers a module of this format keeps for its weight (what weight_nbytes counts)
    weight_buffers: Tuple[str, ...] = INTEGER_BUFFERS

    @property
    def runs_dynamic(self) -> bool:
        """Whether its layers can quantize their inputs (``activations="dynamic"``)."""
        return self.has_activation_modes

    def __init__(self, qtype: QType):
        self.qtype = qtype
        self.name = qtype.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # -- quantizing -------------------------------------------------------------------------------
    def quantize_weight(self, tensor: torch.Tensor, *, axis: Optional[int], group_size: Optional[int],
                        symmetric: bool, method: Optional[str]):
        """``mono_quant.quantize_weight`` for this format (see there for the arguments)."""
        raise NotImplementedError

    def convert(self, w: torch.Tensor, cfg, layer_type: str, measure_error: bool):
        """``(stored weight, SQNR in dB)`` of a layer's float weight under config ``cfg``
        (NaN SQNR when not ``measure_error`` and the format can skip it).  Raises
        NonFiniteWeightError (without a layer name) for NaN/Inf."""
        raise NotImplementedError

    def packs_straight(self, tensor: torch.Tensor, cfg) -> bool:
        """Whether a selected weight goes straight into a packed kernel layout (no plain copy)."""
        return False

    #: a checkpoint weight of this format can be quantized and written in row ranges
    #: (``io.stream_weight.stream_rows``; formats that pack straight stream by panels)
    streams_row_ranges: bool = False

    # -- a module's storage -----------------------------------------------------------------------
    def set_weight(self, module, weight) -> None:
        """Register the stored weight's buffers on ``module`` (and its scheme attributes)."""
        module.register_buffer("weight_qdata", weight.qdata)
        module.register_buffer("weight_scale", weight.scale)
        module.register_buffer("weight_zero_point", weight.zero_point)
        module.weight_axis = weight.axis
        module.weight_symmetric = weight.symmetric
        module.weight_group_size = None

    def module_weight(self, module):
        """The module's weight as a QuantizedWeight (integer formats) or its float tensor."""
        raise NotImplementedError

    def dequantize(self, module, dtype: torch.dtype) -> torch.Tensor:
        """The module's weight as a float tensor of its original shape."""
        return self.module_weight(module).dequantize(dtype)

    def float_fill(self, module):
        """``(shape, fill)``: ``fill(out)`` writes the module's float32 weight (as ``dequantize``
        gives it) into ``out``, a contiguous float32 CPU tensor of ``shape``, and returns it; or
        None where the format has no such call (layer_cache.float_weight then copies a fresh one)."""
        return None

    def weight_nbytes(self, module) -> int:
        """Bytes the module's stored weight really takes (data, scales, zero-points, packed copy)."""
        buffers = module._buffers
        names = [n for n in self.weight_buffers + PACKED_BUFFERS if buffers.get(n) is not None]
        return sum(buffers[n].numel() * buffers[n].element_size() for n in names)

    def kernel_args(self, module):
        """The packed int8 kernels' prepared arguments for the module (``layer_cache.kernel_args``),
        or None: only a format with a packed int8 layout has them."""
        return None

    def describe(self, module) -> str:
        """The scheme part of the module's repr."""
        return f", axis={module.weight_axis}, symmetric={module.weight_symmetric}"

    # -- forward ------------------------------------------------------------------------------------
    def compute_weight(self, module, x: torch.Tensor, numel: int, cache: bool):
        """``(weight, bias, compute dtype)`` for running torch's op on ``x``: integer formats
        dequantize to float32 (kept per module for small weights when ``cache``)."""
        if cache or numel > layer_cache.SMALL_WEIGHT_ELEMENTS:  # (large: per call, in this thread's buffer where it may)
            w = float_weight(module, numel, lambda: module.dequantized_weight(torch.float32), op_inputs=(x, module.bias),
                             fill=lambda: self.float_fill(module))
        else:
            w = module.dequantized_weight(torch.float32)
        b = None if module.bias is None else module.bias.float()
        return w.to(x.device), b, torch.float32

    def linear(self, module, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + b`` of a QuantizedLinear, in x's dtype."""
        w, b, dtype = self.compute_weight(module, x, 0, cache=False)
        return F.linear(x.to(dtype), w, b).to(x.dtype)

    def kept_conv_route(self, module, x: torch.Tensor) -> Optional[tuple]:
        """Where this format's own conv2d (a format that has one) runs ``x`` on what the layer keeps,
        for QuantizedConv2d to keep as its route: ``("torch", F.conv2d's arguments after x)``,
        ``("panels", direct_conv2d's panels, bias lanes and live bias)`` or ``("kernel",
        (half_conv2d_raw's arrays, algorithm))``; else None."""
        return None

    def conv2d(self, module, x: torch.Tensor) -> torch.Tensor:
        """A QuantizedConv2d on ``x`` through torch's conv (the module's packed path aside)."""
        w, b, dtype = self.compute_weight(module, x, module.weight_numel(), cache=True)
        return module.conv_with(x.to(dtype), w, b).to(x.dtype)

    def embedding(self, module, indices: torch.Tensor) -> torch.Tensor:
        """A QuantizedEmbedding lookup: only the rows read are dequantized; ``orig_dtype`` out."""
        flat = checked_indices(indices, module.num_embeddings)
        rows = self.embedding_rows(module, flat)
        return rows.reshape(*indices.shape, module.embedding_dim).to(module.orig_dtype)

    def embedding_rows(self, module, flat: torch.Tensor) -> torch.Tensor:
        """float32 rows ``flat`` of an embedding table: one scale per row (axis 0), one for the
        whole table (axis None, per tensor) or one per column (axis 1).  An 8-bit CPU table of the
        first two takes the C gather (kernels/embedding.py: the same values, one pass, no byte-by-byte
        indexing: 40 k rows of 64 from a 1 M-row table 12 ms -> under 1)."""
        table = kept_table(module) if flat.device.type == "cpu" else None
        if table is not None:
            return embedding_rows(table, flat)
        scale, zero = embedding_row_params(module.weight_scale, module.weight_zero_point,
                                           getattr(module, "weight_axis", 0), flat)
        return (module.weight_qdata.index_select(0, flat).float() - zero) * scale

    # -- the manifest and files ---------------------------------------------------------------------
    def scheme(self, symmetric: bool) -> str:
        """The manifest's ``scheme``."""
        return "symmetric" if symmetric else "asymmetric"

    def schemes(self) -> Tuple[str, ...]:
        """The ``scheme`` values a layer of this format may have."""
        return ("symmetric", "asymmetric")

    def saved_axis(self, module) -> Optional[int]:
        """The manifest's ``axis`` of a saved module."""
        return getattr(module, "weight_axis", None)

    def config_axis(self, cfg) -> Optional[int]:
        """The manifest's ``axis`` of a state_dict weight quantized under config ``cfg``."""
        return 0 if cfg.granularity == "per_channel" else None

    def config_group_size(self, cfg) -> Optional[int]:
        """The manifest's ``group_size`` of a state_dict weight under ``cfg`` (group-wise formats only)."""
        return None

    #: the fewest dimensions a weight of this format has
    min_dims: int = 2

    def check_fields(self, layer: Mapping[str, Any]) -> None:
        """Raise BadLayer when a manifest layer's scheme or shape can't be this format's
        (its axis: :meth:`check_axis`)."""
        dtype, scheme, shape = self.name, layer.get("scheme"), layer["shape"]
        need(scheme in self.schemes(), f"scheme {scheme!r} is not one of {self.schemes()} for {dtype}")
        need(len(shape) >= self.min_dims, f"shape {shape} has too few dimensions for a {dtype} weight")

    def check_axis(self, axis, shape) -> None:
        """Raise BadLayer for a manifest ``axis`` this format can't have on ``shape``."""
        need(axis is None or (is_int(axis, 0) and axis < len(shape)),
             f"axis {axis!r} is not None or a dimension of shape {shape}")

    def check_group_size(self, group_size, saved_attr: bool) -> None:
        """Raise BadLayer for a group size this format can't have: the manifest's ``group_size``
        or (``saved_attr``) a saved module's ``weight_group_size``."""
        if saved_attr:
            need(group_size is None, f"weight_group_size {group_size!r} on a {self.name} layer (int4 only)")
        else:  # older writers recorded the config's (unused) int4 group size on every layer
            need(group_size is None or is_int(group_size, 0), f"group_size {group_size!r} is not an int or null")

    def check_saved_scheme(self, layer: Mapping[str, Any], attrs: Mapping[str, Any], symmetric: bool) -> None:
        """Raise BadLayer when a saved module's scheme attributes disagree with its manifest entry."""
        need(symmetric == (layer["scheme"] == "symmetric"),
             f"weight_symmetric {symmetric} disagrees with scheme {layer['scheme']!r}")
        axis = attrs.get("weight_axis", 0)
        need(axis is None or is_int(axis), f"weight_axis {axis!r} is not an int or null")
        need(axis == layer.get("axis"), f"weight_axis {axis!r} disagrees with axis {layer.get('axis')!r}")

    def check_tensors(self, symmetric: bool, axis: Optional[int], group_size: Optional[int], shape: tuple,
                      tensors: Mapping[str, torch.Tensor]) -> None:
        """Raise BadLayer when a layer's own tensors are not a valid weight of this format
        (names, dtypes, sizes for ``shape``, scales, zero-points)."""
        raise NotImplementedError

    def takes_packed_file_layer(self, layer: Mapping[str, Any], own: Mapping[str, torch.Tensor]) -> bool:
        """Whether a state_dict-kind file's layer holds packed kernel buffers a module can
        take as they are (formats with a packed layout)."""
        return False

    def stored_weight(self, layer: Mapping[str, Any], own: Dict[str, torch.Tensor], orig_dtype: torch.dtype,
                      name: str):
        """The stored weight of a state_dict-kind file's layer, as :meth:`convert` made it.
        Raises CheckpointError for tensors that don't fit."""
        raise NotImplementedError


def embedding_row_params(scale: torch.Tensor, zero_point: torch.Tensor, axis: Optional[int],
                         flat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """float32 ``(scale, zero_point)`` of the table rows ``flat``, shaped to broadcast over
    ``[len(flat), embedding_dim]``.  Only a per-row (axis 0) table has a scale per row: a
    per-tensor one has a single scale, which indexing by row would read past."""
    if axis == 0:
        return scale.index_select(0, flat).float()[:, None], zero_point.index_select(0, flat).float()[:, None]
    if axis is None:
        return scale.float().reshape(1, 1), zero_point.float().reshape(1, 1)
    return scale.float().reshape(1, -1), zero_point.float().reshape(1, -1)  # axis 1: one per column


def checked_indices(indices: torch.Tensor, num_embeddings: int) -> torch.Tensor:
    """``indices`` flattened, after nn.Embedding's checks (dtype, range; a meta tensor has no
    values to range-check, so it goes through for shape propagation as torch's does)."""
    if indices.dtype not in (torch.int64, torch.int32):  # what nn.Embedding takes
        # torch's own error for every other dtype (a bool or uint8 tensor would index as a mask)
        F.embedding(indices, torch.empty(0, 0, device=indices.device))
        raise RuntimeError(f"embedding indices must be int64 or int32, got {indices.dtype}")
    flat = indices.reshape(-1)
    check_index_range(flat, num_embeddings)
    return flat

