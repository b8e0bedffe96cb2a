"""Where a warning is attributed: the user's line that led to it, found by walking the stack past
mono-quant's and torch's frames (a fixed stacklevel pointed into the package whenever a warning
was reached through another path: quantize() -> quantize_static -> the calibrator, a forward
through nn.Module's call, an import)."""
from __future__ import annotations

import os
import sys

import torch

__all__ = ["caller_stacklevel"]

_SKIPPED = (os.path.dirname(os.path.abspath(__file__)) + os.sep, os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
            "<frozen ")


def caller_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called by the function calling this one: the first
    frame outside mono-quant and torch (1, that function, when every frame is inside)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED):
        frame = frame.f_back
        # (warnings.warn does not count importlib's bootstrap frames, in an import, as levels)
        if frame is not None and not _importlib_internal(frame.f_code.co_filename):
            level += 1
    return level if frame is not None else 1


def _importlib_internal(filename: str) -> bool:
    return "importlib" in filename and "_bootstrap" in filename
