"""QuantizedGPT2Conv1D: replaces ``transformers.pytorch_utils.Conv1D`` (GPT-2, GPT, ...).

That "Conv1D" is a Linear whose weight is stored transposed, ``[in, out]``
(``y = x @ W + b``).  Its weight is quantized as the Linear it is: transposed
to ``[out, in]`` first, so int8 scales are per *output* feature and int4
groups run along the input, exactly as for an ``nn.Linear`` of the same
function; the kernels are QuantizedLinear's.  transformers is never imported
here: the float type is matched by name (see ``register_qmodule_by_name``).
"""
from __future__ import annotations

import torch
from torch import nn

from .linear import QuantizedLinear
from .registry import register_qmodule_by_name

__all__ = ["QuantizedGPT2Conv1D", "GPT2_CONV1D", "linear_weight_of"]

GPT2_CONV1D = "transformers.pytorch_utils.Conv1D"


class _FloatType:
    """``QuantizedGPT2Conv1D.float_type``: transformers' Conv1D, imported when first asked for
    (only code that already holds such a module, or loads one, asks)."""

    def __get__(self, obj, owner):
        from transformers.pytorch_utils import Conv1D

        return Conv1D


@register_qmodule_by_name(GPT2_CONV1D)
class QuantizedGPT2Conv1D(QuantizedLinear):
    """A GPT-2 ``Conv1D`` (weight ``[in, out]``) stored and run as the equivalent
    QuantizedLinear (weight ``[out, in]``): same outputs as the float layer up to
    quantization, same options (int8 dynamic / weight-only, int4, fp16, bf16).

    :func:`~mono_quant.quantize` replaces every
    ``transformers.pytorch_utils.Conv1D`` with one (matched by name:
    mono-quant never imports transformers for it).  A file stores the
    ``[out, in]`` weight; ``.weight`` (and ``float_weight_shape``) is the float layer's ``[in, out]``.
    Import it from ``mono_quant.modules``.

    Args:
        in_features: The Conv1D's ``nx`` (its weight's first dimension).
        out_features: The Conv1D's ``nf``.
        weight_format: "int8", "uint8", "int4", "fp16" or "bf16".
        orig_dtype: The float weight's dtype.

    Examples:
        >>> model = transformers.GPT2LMHeadModel(config)
        >>> qmodel, skipped = mq.quantize(model, dtype="int8")
        >>> type(qmodel.transformer.h[0].attn.c_attn).__name__
        'QuantizedGPT2Conv1D'
    """

    float_type = _FloatType()
    view_is_float_layout = True  # .weight is the float Conv1D's [in, out] (torch_compat)

    @classmethod
    def from_float(cls, module: nn.Module, weight, activations="dynamic") -> "QuantizedGPT2Conv1D":
        """``weight`` is the quantized (or cast) form of ``linear_weight_of(module)``, ``[out, in]``."""
        return super().from_float(_LinearView(module), weight, activations)

    @staticmethod
    def float_weight_shape(shape):
        """The float Conv1D's weight shape ``[in, out]`` for this module's stored ``[out, in]``."""
        return [shape[1], shape[0]]

    @staticmethod
    def as_float_layout(weight: torch.Tensor) -> torch.Tensor:
        """The stored ``[out, in]`` weight as the float Conv1D's ``[in, out]`` (its state_dict's)."""
        return weight.t().contiguous()

    @classmethod
    def from_packed_int8(cls, module, scale, zero_point, packed, symmetric, activations="dynamic"):
        return super().from_packed_int8(_LinearView(module), scale, zero_point, packed, symmetric, activations)


class _LinearView:
    """What QuantizedLinear.from_float reads of a float Linear, for a Conv1D."""

    def __init__(self, module: nn.Module):
        nx, nf = module.weight.shape
        self.in_features, self.out_features = int(nx), int(nf)
        self.weight = module.weight  # only its dtype is read
        self.bias = module.bias
        self.training = module.training


def linear_weight_of(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The ``[out, in]`` weight to quantize for a Conv1D whose stored weight is ``weight`` ``[in, out]``."""
    return weight.t()
