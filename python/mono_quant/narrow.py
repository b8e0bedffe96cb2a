"""Narrow int8 layers stay float: a Linear with fewer outputs than a panel of the packed int8
layout (``INT8_PANEL_ROWS``) is padded to a whole panel of codes, so with its scales it can take
as many bytes as its float weight or more (1-4 outputs of a float32 weight, up to 8 of a
float16 / bfloat16 one).  Quantizing it would make the model bigger, not smaller, and lose
precision: it is left float and listed in ``skipped`` with the sizes, unless ``include``
names it exactly (a glob or a type does not count: that asked for many layers, not this one).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .kernels.layout import INT8_PANEL_ROWS, int8_packed_sizes
from .qtypes import get_qtype

__all__ = ["narrow_reason"]


def narrow_reason(cfg, names: List[str], shape: Sequence[int], float_dtype: torch.dtype) -> Optional[str]:
    """Why a layer whose int8 weight would be ``shape`` ``[out, in]`` (stored packed) stays float,
    or None.  ``names``: the layer's names (an exact ``include`` entry quantizes it anyway)."""
    if get_qtype(cfg.dtype).name != "int8" or len(shape) != 2:
        return None
    out, cols = int(shape[0]), int(shape[1])
    if out == 0 or cols == 0 or out >= INT8_PANEL_ROWS:
        return None
    if any(isinstance(p, str) and p in names for p in (cfg.include or ())):
        return None  # named exactly: the user asked for this layer
    codes, _ = int8_packed_sizes(out, cols)
    scales = 8 * (out if cfg.granularity == "per_channel" else 1)  # float32 scale and int32 zero-point
    quantized = codes + scales
    as_float = out * cols * torch.empty((), dtype=float_dtype).element_size()
    if quantized < as_float:
        return None
    return (f"narrow layer: its {out} output{'s' if out != 1 else ''} pad to {INT8_PANEL_ROWS} rows of int8 "
            f"codes, so int8 takes {quantized} bytes (codes and scales) where the {str(float_dtype)[6:]} weight "
            f"takes {as_float}: it would grow, not shrink; include=[{names[0]!r}] (its exact name) quantizes "
            f"it anyway")
