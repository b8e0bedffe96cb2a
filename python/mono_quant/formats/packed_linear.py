"""The packed int8 matmul path of a layer (QuantizedLinear, and QuantizedConv2d on its
im2col rows): when the C kernels take an input, the product through them, and the
shape rule choosing dequantize + BLAS instead for weight-only layers."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import kernels
from ..kernels.row_rules import (INT8_WEIGHT_ONLY_BLAS_MIN_IN_FEATURES, INT8_WEIGHT_ONLY_BLAS_MIN_ROWS,
                                  int8_weight_only_blas_rows, int8_weight_only_takes_amx,
                                  int8_weight_only_takes_blas, small_weight_takes_blas)
from ..kernels.int8 import MAX_IN_FEATURES, linear_int8_prepared, linear_int8_raw, prepare_linear_int8
from ..kernels.stamps import make_stamp, tensors_unchanged
from ..kernels import reference
from .layer_cache import float_weight, kernel_args_stamped, per_layer_cache

__all__ = ["BLAS_MIN_ROWS", "BLAS_MIN_IN_FEATURES", "blas_min_rows", "takes_blas", "takes_amx", "weight_only_mode", "kernel_takes", "conv_kernel_takes", "packed_linear", "dequantized_packed",
           "KERNEL_DTYPES", "dynamic_linear", "weight_only_linear", "blas_linear"]

#: activation dtypes the int8 kernels read
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Rows (of x reshaped to 2-D) from which a weight-only int8 layer runs torch's BLAS on the
# weight dequantized once per call instead of the packed kernels, per kernel level
# (kernels/row_rules.py; the traced op applies the same table).
BLAS_MIN_ROWS = INT8_WEIGHT_ONLY_BLAS_MIN_ROWS
# ... for layers of at least this many in_features (narrower ones keep the kernels).
BLAS_MIN_IN_FEATURES = INT8_WEIGHT_ONLY_BLAS_MIN_IN_FEATURES


def blas_min_rows() -> int:
    """Rows from which a weight-only int8 layer takes the dequantize + BLAS path on
    the active kernel level (see BLAS_MIN_ROWS; int4: ``int4.BLAS_MIN_ROWS``), when it is at
    least BLAS_MIN_IN_FEATURES wide (:func:`takes_blas`)."""
    return BLAS_MIN_ROWS[kernels.SETTINGS.isa]


def takes_blas(rows: int, in_features: int, out_features: int) -> bool:
    """Whether a weight-only int8 Linear call of ``rows`` rows takes the dequantize + BLAS path
    at the active kernel level (both tables: row_rules.int8_weight_only_takes_blas)."""
    return int8_weight_only_takes_blas(rows, in_features, out_features, kernels.SETTINGS.isa)


def takes_amx(rows: int, in_features: int, out_features: int) -> bool:
    """Whether a weight-only int8 Linear call of ``rows`` rows runs on AMX-BF16 at the active
    kernel level (row_rules.int8_weight_only_takes_amx)."""
    return int8_weight_only_takes_amx(rows, in_features, out_features, kernels.SETTINGS.isa)


def weight_only_mode(rows: int, in_features: int, out_features: int) -> str:
    """``_C.linear_int8``'s mode for a weight-only call of ``rows`` rows: on AMX-BF16 where :func:`takes_amx`
    says so, else the tiles."""
    return "weight_only_amx" if takes_amx(rows, in_features, out_features) else "weight_only"


def kernel_takes(x: torch.Tensor, in_features: int) -> bool:
    """Whether the C kernels can run this input (else: the torch fallback)."""
    if not x.is_cpu or x.dtype not in KERNEL_DTYPES or x.shape[-1] != in_features:
        return False
    if in_features > MAX_IN_FEATURES or x.numel() == 0:
        return False
    return not (x.requires_grad and torch.is_grad_enabled())  # the kernels have no backward


def conv_kernel_takes(module, x: torch.Tensor, k: int) -> bool:
    """Whether the packed int8 conv kernels can run ``x`` through ``module`` (a
    QuantizedConv2d whose packed reduction is ``k`` = in_channels/groups * kh * kw): a
    non-empty 4-D CPU input of a kernel dtype with the layer's channels, numeric padding,
    the packed weight on the CPU, and ``k`` (and, as :func:`kernel_takes` asks of a row,
    the input's width) within MAX_IN_FEATURES.  The eager forward and the traced one
    (formats/traced_forward.py) both ask this; gradients are not asked about: the eager
    forward sends inputs that record them to the traced one first (``use_ops``)."""
    packed = module._buffers.get("weight_packed")
    return (x.dim() == 4 and not isinstance(module.padding2d, str) and x.shape[1] == module.in_channels
            and packed is not None and packed.is_cpu and x.is_cpu and x.dtype in KERNEL_DTYPES
            and k <= MAX_IN_FEATURES and x.shape[-1] <= MAX_IN_FEATURES and x.numel() > 0)


def packed_linear(module, x2d: torch.Tensor, args: tuple, amx: bool = False) -> torch.Tensor:
    """float32 ``x2d @ W.T + b`` through the C kernels with one group's
    ``kernel_args``; ``module.activations`` picks dynamic int8 or weight-only; ``amx``
    (weight-only; a Linear's rows, row_rules.int8_weight_only_takes_amx): on AMX-BF16."""
    if x2d.shape[-1] > 1 and x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    mode = "dynamic" if module.activations == "dynamic" else "weight_only_amx" if amx else "weight_only"
    reduce_range = mode == "dynamic" and module.reduce_range  # 7-bit activations (QuantConfig.reduce_range)
    return torch.from_numpy(linear_int8_raw(kernels.to_numpy(x2d), args, mode, reduce_range))


def dequantized_packed(module, info: dict, kernel_size: Optional[tuple] = None,
                       out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The float32 weight ``[out, K]`` of a packed int8 layer (the same values as
    ``dequantized_weight``), K in the packed order ((kh, kw, in_channel) for a conv) or, given a
    conv's ``kernel_size`` (kh, kw), in torch's (in_channel, kh, kw).  On the CPU one C pass from
    the packed layout; elsewhere its pure-torch twin (kernels.reference.dequantize_packed_int8).
    ``out``: a float32 ``[out, K]`` tensor to write them into (formats/call_scratch.py's)."""
    n, k, groups = info["out_features"], info["in_features"], info["groups"]
    packed, taps = module.weight_packed, 1 if kernel_size is None else kernel_size[0] * kernel_size[1]
    if packed.is_cpu:  # one C pass from the packed layout
        return kernels.dequantize_packed_int8(packed, groups, n // groups, k, taps, module.weight_scale,
                                              module.weight_zero_point, out=out)
    w = reference.dequantize_packed_int8(packed, groups, n // groups, k, taps, module.weight_scale,
                                         module.weight_zero_point)
    return w if out is None else out.copy_(w)


# Per dynamic int8 layer, what its common call (a float32 CPU input) needs, kept with the
# stamp (kernels/stamps.py) of everything it was made from (None: the layer has no such
# call): that call then skips the general path's checks (~0.7 us, as much as a small
# layer's kernel).
_DYNAMIC_CALLS = per_layer_cache()
_DYNAMIC_SOURCES = ((None, "activations"), (None, "reduce_range"))


def _keep_dynamic_call(module) -> tuple:
    stamp, packed = kernel_args_stamped(module)
    stamp += make_stamp(module, _DYNAMIC_SOURCES)
    call = None
    if (packed is not None and module.activations == "dynamic" and packed[0]["groups"] == 1
            and packed[0]["in_features"] <= MAX_IN_FEATURES):
        k = packed[0]["in_features"]
        call = (k, packed[0]["out_features"], prepare_linear_int8(packed[1][0], k), bool(module.reduce_range))
    kept = (stamp, call)
    _DYNAMIC_CALLS[module] = kept
    return kept


def dynamic_linear(module, x: torch.Tensor):
    """``x @ W.T + b`` of a dynamic int8 layer for a float32 CPU ``x`` (rows of any leading
    shape) through the kernel arguments kept per layer while they hold: the same kernel call
    as :func:`packed_linear`'s.  None where that call does not apply (the caller then takes
    the general path): another dtype or device, a gradient, an empty input, another width."""
    if module.activations != "dynamic" or x.dtype is not torch.float32 or not x.is_cpu or x.requires_grad:
        return None
    kept = _DYNAMIC_CALLS.get(module)
    if kept is None or not tensors_unchanged(module.__dict__, kept[0]):
        kept = _keep_dynamic_call(module)
    call = kept[1]
    if call is None or x.shape[-1] != call[0] or x.numel() == 0:
        return None
    if x.dim() == 2 and x.stride(1) == 1:
        return torch.from_numpy(linear_int8_prepared(x.numpy(), call[2], call[3]))
    x2d = x.reshape(-1, call[0])
    if call[0] > 1 and x2d.stride(1) != 1:
        x2d = x2d.contiguous()
    y = torch.from_numpy(linear_int8_prepared(x2d.numpy(), call[2], call[3]))
    return y.reshape(*x.shape[:-1], call[1])


# Per weight-only int8 layer, the same for its common call: a float32 CPU input of rows for the packed
# tiles, AMX-BF16 or the small-weight BLAS rule (row_rules): a CNN's Linear head at batch 1-64 paid ~5 us
# of Python around a 5-10 us call through the general path (bench_models.py, per-layer hooks: 1.3-1.7x
# fp32's time), and after a large call (AMX's x pieces) the general path's Python ran from a cold cache:
# 768 -> 64 at 256 rows took ~70 us around a 120 us kernel.
_WEIGHT_ONLY_CALLS = per_layer_cache()
_WEIGHT_ONLY_SOURCES = ((None, "activations"),)


def _keep_weight_only_call(module) -> tuple:
    stamp, packed = kernel_args_stamped(module)
    stamp += make_stamp(module, _WEIGHT_ONLY_SOURCES)
    call = None
    if (packed is not None and module.activations is None and packed[0]["groups"] == 1
            and packed[0]["in_features"] <= MAX_IN_FEATURES):
        bias = module.bias
        call = (packed[0]["in_features"], packed[1][0], packed[0]["out_features"], packed,
                None if bias is None else bias.detach().float())
    kept = (stamp, call)
    _WEIGHT_ONLY_CALLS[module] = kept
    return kept


def weight_only_linear(module, x: torch.Tensor):
    """``x @ W.T + b`` of a weight-only int8 layer for a float32 CPU ``x`` (rows of any leading shape)
    through the arguments kept per layer while they hold: the general path's call (the tiles, AMX-BF16,
    or the small-weight BLAS rule on the kept float32 weight).  None where the general path must run
    (another dtype or device, a gradient, an empty input, another width, rows for the large-weight BLAS
    rule)."""
    if module.activations is not None or x.dtype is not torch.float32 or not x.is_cpu or x.requires_grad:
        return None
    kept = _WEIGHT_ONLY_CALLS.get(module)
    if kept is None or not tensors_unchanged(module.__dict__, kept[0]):
        kept = _keep_weight_only_call(module)
    call = kept[1]
    if call is None or x.shape[-1] != call[0] or x.numel() == 0:
        return None
    x2d = x if x.dim() == 2 else x.reshape(-1, call[0])
    isa, rows = kernels.SETTINGS.isa, x2d.shape[0]
    if small_weight_takes_blas(rows, call[0], call[2], isa, fmt="int8_weight_only"):  # blas_linear's call, its bias kept
        y = F.linear(x2d, _float_weight(module, call[3]), call[4])
    else:
        amx = int8_weight_only_takes_amx(rows, call[0], call[2], isa)
        if not amx and int8_weight_only_blas_rows(rows, call[0], isa):
            return None  # the large-weight BLAS rule (int8_weight_only_takes_blas): the general path
        if call[0] > 1 and x2d.stride(1) != 1:
            x2d = x2d.contiguous()
        y = torch.from_numpy(linear_int8_raw(x2d.numpy(), call[1], "weight_only_amx" if amx else "weight_only"))
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], call[2])


def blas_linear(module, x2d: torch.Tensor, packed: tuple) -> torch.Tensor:
    """float32 ``x2d @ W.T + b`` of a weight-only int8 layer by torch's BLAS on its dequantized weight
    (``packed``: its kernel_args): kept per layer where it is small, else made per call in this
    thread's buffer where it may (layer_cache.float_weight)."""
    b = module.bias
    return F.linear(x2d.float(), _float_weight(module, packed, (x2d, b)), None if b is None else b.float())


def _float_weight(module, packed: tuple, op_inputs: Optional[tuple] = None) -> torch.Tensor:
    # the dequantized weight, kept per layer while ``packed`` (its kernel_args) stands where it is small
    info = packed[0]
    n, k = info["out_features"], info["in_features"]
    return float_weight(module, n * k, lambda: dequantized_packed(module, info), packed, op_inputs=op_inputs,
                        fill=lambda: ((n, k), lambda out: dequantized_packed(module, info, out=out)))
