"""The registry of weight formats: one :class:`~.base.WeightFormat` object per dtype name.

Adding a format: its QType in ``qtypes.QTYPES`` (name, bits, ranges, storage), a file
here with its WeightFormat subclass, and one line below.  (Static int8 with calibrated
activation scales, issue 12, is the next one: ``static_int8.py`` + its line.)
"""
from __future__ import annotations

from typing import Dict, Union

import torch

from ..qtypes import QTYPES, QType, get_qtype
from .base import WeightFormat
from .cast import CastFormat
from .int4 import Int4Format
from .int8 import AffineIntFormat

__all__ = ["FORMATS", "get_format", "format_of"]

#: canonical dtype name -> its format object
FORMATS: Dict[str, WeightFormat] = {
    "int8": AffineIntFormat(QTYPES["int8"], packs=True),
    "uint8": AffineIntFormat(QTYPES["uint8"], packs=False),
    "int4": Int4Format(QTYPES["int4"]),
    "fp16": CastFormat(QTYPES["fp16"]),
    "bf16": CastFormat(QTYPES["bf16"]),
}


def get_format(dtype: Union[str, torch.dtype, QType, WeightFormat]) -> WeightFormat:
    """The format object of a dtype given as a name (aliases too), a torch dtype, a QType or
    a format.  Raises ValueError listing the valid names for anything else."""
    if isinstance(dtype, WeightFormat):
        return dtype
    fmt = FORMATS.get(dtype) if isinstance(dtype, str) else None
    if fmt is not None:  # the canonical name (what modules store): the per-call fast path
        return fmt
    return FORMATS[get_qtype(dtype).name]


def format_of(weight) -> WeightFormat:
    """The format of a stored weight: a QuantizedWeight's dtype, or a cast tensor's dtype."""
    return get_format(weight.dtype)
