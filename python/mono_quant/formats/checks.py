"""Small helpers the formats' file checks share (``WeightFormat.check_*``, ``io.validate``):
one problem is a :class:`BadLayer`, which the loader turns into a CheckpointError naming
the layer and the file."""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["BadLayer", "need", "is_int", "spec", "first_bad", "value_at", "check_scales"]


class BadLayer(Exception):
    """One problem with a layer read from a file (its message says what)."""


def need(ok: bool, message) -> None:
    """Raise BadLayer(message) unless ``ok``; ``message`` may be a callable (built only on failure)."""
    if not ok:
        raise BadLayer(message() if callable(message) else message)


def is_int(value, low: Optional[int] = None) -> bool:
    """An int (not a bool), at least ``low`` when given."""
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def spec(t: torch.Tensor) -> str:
    """``int8[3, 4]``: a tensor's dtype and shape for messages."""
    return f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}"


def first_bad(mask: torch.Tensor) -> Optional[int]:
    """The flat index of the first true entry, or None."""
    flat = mask.reshape(-1)
    return int(flat.nonzero()[0, 0]) if bool(flat.any()) else None


def value_at(t: torch.Tensor, index: int):
    return t.reshape(-1)[index].item()


def check_scales(scale: torch.Tensor) -> None:
    bad = first_bad(~(torch.isfinite(scale) & (scale > 0)))
    need(bad is None, lambda: f"weight_scale[{bad}] = {value_at(scale, bad)}: scales must be finite and > 0")
