"""The exception raised for unreadable or inconsistent mono-quant files."""
from __future__ import annotations

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupted, from a newer format version,
    disagrees with its own manifest, or does not match the model it is loaded
    into.  The message names the file and the offending keys."""
