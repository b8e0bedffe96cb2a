"""The float cast formats (fp16, bf16): the weight is kept as one tensor, ``weight``, in the
target dtype; layers compute in the input's dtype.  A Linear with float32 inputs on the CPU
runs the C kernel that widens the 16-bit weight in registers (``kernels.fp16.half_linear``:
its tiles up to ``KERNEL_MAX_ROWS`` rows, its panel path up to ``PANEL_MAX_ROWS``) where it
beats torch's op on the converted weight (``kernels.fp16.half_path``)."""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError, NonFiniteWeightError
from ..kernels.fp16 import HALF_WEIGHT_DTYPES, KERNEL_MAX_ROWS, half_path
from ..kernels.settings import SETTINGS
from ..tensor import sqnr_db
from .base import WeightFormat
from .checks import need, spec
from .half_conv import eager_half_conv, kept_conv_route
from .half_linear import eager_half_linear
from .layer_cache import float_weight

__all__ = ["CastFormat", "KERNEL_MAX_ROWS", "takes_half_kernel"]

# A Linear runs kernels.fp16.half_linear where kernels.fp16.half_path says so (its tiles up to
# KERNEL_MAX_ROWS rows, its panel path up to PANEL_MAX_ROWS, per kernel level; the crossovers
# measured there), and torch's F.linear on the weight converted to float32 above.


def takes_half_kernel(x: torch.Tensor, weight: torch.Tensor, isa: str, any_rows: bool = False) -> bool:
    """Whether a Linear of ``weight`` (fp16 / bf16 ``[out, in]``) on ``x`` runs the C kernel:
    float32 ``x`` on the CPU with ``in`` features, both non-empty, rows within
    ``PANEL_MAX_ROWS[isa]`` or ``KERNEL_MAX_ROWS[isa]`` (kernels.fp16.half_path; ``any_rows``: whatever the rows, for a traced graph, whose op
    applies the row rule itself at run time: a symbolic row count is never branched on)."""
    if (x.dtype != torch.float32 or weight.dtype not in HALF_WEIGHT_DTYPES or weight.dim() != 2
            or x.device.type != "cpu" or weight.device.type != "cpu" or x.dim() == 0):
        return False
    in_features = weight.shape[1]
    if x.shape[-1] != in_features or x.numel() == 0 or weight.numel() == 0:
        return False
    return any_rows or half_path(x.numel() // in_features, in_features, weight.shape[0], isa) != "torch"


class CastFormat(WeightFormat):
    """A plain cast of the float weight to ``qtype.storage``."""

    integer = False
    has_activation_modes = False
    weight_buffers = ("weight",)

    def quantize_weight(self, tensor, *, axis, group_size, symmetric, method):
        if method not in (None, "rtn"):
            raise ConfigError(f"method={method!r} applies to int4 only; {self.name} uses round-to-nearest ('rtn')")
        raise ConfigError(  # (a ValueError too)
            f"quantize_weight() makes integer formats; for {self.name} cast the tensor "
            f"(tensor.to({self.qtype.storage})) or use quantize(model, dtype={self.name!r})"
        )

    def convert(self, w: torch.Tensor, cfg, layer_type: str, measure_error: bool):
        # Block by block (about 256K weights each), so the checks and the error's temporaries stay
        # small beside the weight: peak memory near the float model plus the cast copy.
        w = w.detach()
        cast = torch.empty(w.shape, dtype=self.qtype.storage, device=w.device)  # never the caller's tensor
        if w.numel() == 0:
            return cast, (math.inf if measure_error else math.nan)
        rows, out = w.reshape(w.shape[0], -1), cast.view(w.shape[0], -1)
        step = max(1, (1 << 18) // rows.shape[1])
        signal = noise = 0.0
        for r0 in range(0, rows.shape[0], step):
            block, done = rows[r0:r0 + step], out[r0:r0 + step]
            if block.element_size() == 1:  # float8: torch has no isfinite / pow for it
                block = block.float()
            bad = ~torch.isfinite(block)
            if bool(bad.any()):
                raise NonFiniteWeightError("non-finite weight", r0 + int(bad.any(1).nonzero()[0]))
            done.copy_(block)
            overflow = torch.isinf(done)  # finite weights beyond the dtype's range (fp16: |w| > 65504) become Inf
            if bool(overflow.any()):
                self._raise_overflow(rows, out, r0 + int(overflow.any(1).nonzero()[0]))
            if measure_error:  # float64 terms: a float32 square overflows past |w| ~1.8e19 (bf16 reaches 3.4e38)
                exact = block.double()
                signal += float(exact.pow(2).sum())
                noise += float((exact - done.double()).pow_(2).sum())
        return cast, (sqnr_db(signal, noise) if measure_error else math.nan)

    def _raise_overflow(self, rows: torch.Tensor, out: torch.Tensor, row: int) -> None:
        big, limit = float(rows[row][torch.isinf(out[row])].abs().max()), torch.finfo(self.qtype.storage).max
        hint = ", bf16 holds them" if self.name == "fp16" else ""
        raise NonFiniteWeightError(
            "weight overflows the cast", row,
            what=f"values beyond {self.name}'s range (|w| up to {big:.4g} > {limit:.6g}: stored as Inf{hint})")

    # -- a module's storage -------------------------------------------------------------------------
    def set_weight(self, module, weight) -> None:
        module.register_buffer("weight", weight)

    def module_weight(self, module):
        return module._buffers["weight"]

    def dequantize(self, module, dtype: torch.dtype) -> torch.Tensor:
        return module._buffers["weight"].to(dtype)

    def describe(self, module) -> str:
        return ""

    # -- forward --------------------------------------------------------------------------------------
    def compute_weight(self, module, x: torch.Tensor, numel: int, cache: bool):
        """The weight in x's dtype (a float32 copy kept for small layers; a large one widened per call into
        this thread's buffer where it may, formats/call_scratch.py), bias likewise."""
        w = module._buffers["weight"]
        if w.dtype != x.dtype:
            if x.dtype == torch.float32:  # (w among the op's inputs: a weight a user made trainable)
                half = w
                w = float_weight(module, w.numel(), lambda: half.float(), op_inputs=(x, module.bias, half),
                                 fill=lambda: (half.shape, lambda out: out.copy_(half)))
            else:
                w = w.to(x.dtype)
        b = None if module.bias is None else module.bias.to(x.dtype)
        return w.to(x.device), b, x.dtype

    def linear(self, module, x: torch.Tensor) -> torch.Tensor:
        y = eager_half_linear(module, x, takes_half_kernel)  # the C kernel, its arguments kept per layer
        if y is not None:
            return y
        w = module._buffers["weight"]
        if x.dim() > 2 and takes_half_kernel(x, w, SETTINGS.isa, any_rows=True):
            # past the row rule: on the rows as 2-D, as the op of a traced graph computes it (torch's
            # linear of an N-D input that is not contiguous adds the bias apart, other bits)
            y = super().linear(module, x.reshape(-1, w.shape[1]))
            return y.reshape(*x.shape[:-1], w.shape[0])
        return super().linear(module, x)

    def kept_conv_route(self, module, x: torch.Tensor) -> Optional[tuple]:
        return kept_conv_route(module, x)

    def conv2d(self, module, x: torch.Tensor) -> torch.Tensor:
        y = eager_half_conv(module, x)  # the C kernel on small images, long reductions (formats/half_conv.py)
        return super().conv2d(module, x) if y is None else y

    def embedding(self, module, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, module._buffers["weight"]).to(module.orig_dtype)

    # -- the manifest and files -----------------------------------------------------------------------
    def scheme(self, symmetric: bool) -> str:
        return "cast"

    def schemes(self):
        return ("cast",)

    def saved_axis(self, module) -> Optional[int]:
        return None

    def config_axis(self, cfg) -> Optional[int]:
        return None

    min_dims = 1

    def check_axis(self, axis, shape) -> None:
        need(axis is None, f"axis {axis!r} on a {self.name} (cast) layer")

    def check_saved_scheme(self, layer, attrs, symmetric: bool) -> None:
        pass  # a cast has no scheme attributes to agree with

    def check_tensors(self, symmetric, axis, group_size, shape: tuple, tensors) -> None:
        weight = tensors.get("weight")
        need(weight is not None and weight.dtype == self.qtype.storage and tuple(weight.shape) == shape,
             f"a {self.name} layer needs 'weight' of {str(self.qtype.storage).replace('torch.', '')}{list(shape)}"
             + ("" if weight is None else f", got {spec(weight)}"))
        extra = set(tensors) - {"weight", "bias"}
        need(not extra, f"unexpected tensors {sorted(extra)} for a {self.name} layer")

    def stored_weight(self, layer: Mapping[str, Any], own: Dict[str, torch.Tensor], orig_dtype: torch.dtype,
                      name: str):
        shape = list(layer["shape"])
        weight = own.get("weight")
        if weight is None or weight.dtype != self.qtype.storage or list(weight.shape) != shape:
            raise CheckpointError(f"layer {name!r}: a {self.name} layer needs 'weight' of {self.qtype.storage} "
                                  f"{shape}")
        return weight
