"""Integer options (group sizes, counts, axes) as callers pass them.

A caller's integer is often not a Python ``int``: numpy's (``np.int64`` from an
array or a sweep) and 0-d integer tensors are integers too, and
``operator.index`` is Python's own test for one.  A bool is refused although it
is an ``int`` subclass: ``min_weight_numel=True`` meant something, but not 1.
Floats are refused, 64.0 included (``operator.index`` refuses them).
"""
from __future__ import annotations

import operator
from typing import Optional

import torch

__all__ = ["as_int"]


def as_int(value) -> Optional[int]:
    """``value`` as a Python int when it is an integer (an int, a numpy integer, a
    0-d integer tensor: anything ``operator.index`` takes), else None (a bool of
    any kind, a float, a str, ...).  Callers raise their own error on None."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype is torch.bool):
        return None  # (np.bool_ has no __index__: operator.index refuses it below)
    try:
        return operator.index(value)
    except TypeError:
        return None
