"""A saved conv layer's geometry (an embedding bag's reduction) against the model's layer it replaces at load.

The file rebuilds the layer with its own stride, padding, dilation, groups and padding
mode; a skeleton built with other values (another config of the same architecture) has
the same weight shape, so without this check the loaded model would silently compute
another convolution than the model it is loaded into describes.  The same holds for a bias
the file's layer has and the model's has not, or the other way round (``bias=False``
configs, or a file whose bias was taken out)."""
from __future__ import annotations

from torch import nn

from .errors import CheckpointError

__all__ = ["check_layer_geometry", "plain_value"]

_GEOMETRY = ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode",
             "mode", "include_last_offset")  # (an EmbeddingBag's reduction)


def plain_value(value):
    """A geometry value as compared and printed: a list or tuple as a tuple."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _has_bias(module: nn.Module) -> bool:
    bias = getattr(module, "bias")
    return bias if isinstance(bias, bool) else bias is not None  # (nn.LSTM's bias is a flag)


def check_layer_geometry(name: str, float_module: nn.Module, qmodule: nn.Module) -> None:
    """Raise CheckpointError naming each geometry attribute the rebuilt ``qmodule`` and the
    model's ``float_module`` both have, with different values, and a bias one of them lacks."""
    # an EmbeddingBag leaves padding_idx out of its bags (an Embedding's only holds its gradient)
    attrs = _GEOMETRY + (("padding_idx",) if isinstance(float_module, nn.EmbeddingBag) else ())
    differ = [f"{attr} {plain_value(getattr(qmodule, attr))} in the checkpoint, {plain_value(getattr(float_module, attr))} "
              f"in the model" for attr in attrs
              if hasattr(qmodule, attr) and hasattr(float_module, attr)
              and plain_value(getattr(qmodule, attr)) != plain_value(getattr(float_module, attr))]
    if hasattr(qmodule, "bias") and hasattr(float_module, "bias") and _has_bias(qmodule) != _has_bias(float_module):
        where = ("checkpoint", "model") if _has_bias(qmodule) else ("model", "checkpoint")
        differ.append(f"a bias in the {where[0]}, none in the {where[1]}")
    if differ:
        raise CheckpointError(f"layer {name!r}: {'; '.join(differ)} (build the model with the configuration the "
                              f"checkpoint was saved from)")
