"""The exception raised for unreadable or inconsistent mono-quant files
(defined in :mod:`mono_quant.errors`; kept importable from here)."""
from __future__ import annotations

from ..errors import CheckpointError

__all__ = ["CheckpointError"]
