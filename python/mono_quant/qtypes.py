"""The registry of target dtypes: names, bit widths, integer ranges."""
from __future__ import annotations

import difflib

from dataclasses import dataclass
from typing import Optional, Union

import torch

from .errors import ConfigError

__all__ = ["QType", "QTYPES", "get_qtype"]


@dataclass(frozen=True)
class QType:
    """A target format.

    ``kind`` is ``"int"`` (affine integer with scale / zero-point) or
    ``"float"`` (a plain cast).  Integer types give their asymmetric range
    ``qmin..qmax`` and the symmetric one ``sym_qmin..sym_qmax``: symmetric
    int8 uses -127..127, as torch's ``weight_observer_range_neg_127_to_127``,
    so the grid is the same on both sides of zero and integer kernels never
    see -128 in a weight.
    """

    name: str
    kind: str
    bits: int
    qmin: int = 0
    qmax: int = 0
    sym_qmin: int = 0
    sym_qmax: int = 0
    storage: Optional[torch.dtype] = None  # the torch dtype that holds the data

    def qrange(self, symmetric: bool) -> tuple:
        return (self.sym_qmin, self.sym_qmax) if symmetric else (self.qmin, self.qmax)


QTYPES = {
    "int8": QType("int8", "int", 8, -128, 127, -127, 127, torch.int8),
    "uint8": QType("uint8", "int", 8, 0, 255, 0, 255, torch.uint8),
    # int4: codes 0..15 with a per-group zero-point; symmetric -7..7 (stored
    # as code - 8), the same grid on both sides of zero.  Two codes per uint8
    # byte, group-wise scales: see int4.py and docs/formats.md.
    "int4": QType("int4", "int", 4, 0, 15, -7, 7, torch.uint8),
    "fp16": QType("fp16", "float", 16, storage=torch.float16),
    "bf16": QType("bf16", "float", 16, storage=torch.bfloat16),
}
"""Every dtype mono-quant quantizes to, by name: "int8", "uint8", "int4", "fp16", "bf16"."""

_ALIASES = {
    "qint8": "int8",
    "quint8": "uint8",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
}
_TORCH_DTYPES = {
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
}


def get_qtype(dtype: Union[str, torch.dtype, QType]) -> QType:
    """Resolve a dtype given as a name (``"int8"``), a torch dtype or a QType.

    Args:
        dtype: A name from :data:`~mono_quant.QTYPES` (case-insensitive; aliases
            such as "qint8", "float16" accepted), ``torch.int8``, ``torch.uint8``,
            ``torch.float16``, ``torch.bfloat16``, or a QType (returned as is).

    Returns:
        The QType: name, kind ("int" or "float"), bits, integer ranges, storage dtype.

    Raises:
        ValueError: Anything else; the message lists the valid names.

    Examples:
        >>> mq.get_qtype("INT8").sym_qmin, mq.get_qtype(torch.float16).name
        (-127, 'fp16')
    """
    if isinstance(dtype, QType):
        return dtype
    exact = QTYPES.get(dtype) if isinstance(dtype, str) else None
    if exact is not None:  # the canonical name (what modules store): the per-call fast path
        return exact
    if isinstance(dtype, torch.dtype):
        name = _TORCH_DTYPES.get(dtype)
    elif isinstance(dtype, str):
        key = dtype.strip().lower()
        name = _ALIASES.get(key, key)
    else:
        name = None
    if name not in QTYPES:
        valid = ", ".join(repr(n) for n in QTYPES)
        close = difflib.get_close_matches(name, list(QTYPES) + list(_ALIASES), n=1) if isinstance(name, str) else []
        hint = f"did you mean {_ALIASES.get(close[0], close[0])!r}? " if close else ""
        raise ConfigError(
            f"unknown dtype {dtype!r}: {hint}expected one of {valid} "
            "(or torch.int8, torch.uint8, torch.float16, torch.bfloat16)"
        )
    return QTYPES[name]
