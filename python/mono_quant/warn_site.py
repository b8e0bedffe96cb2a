"""Where a warning is attributed: the user's line that led to it, found by walking the stack past
mono-quant's frames and those of the libraries it is called through (torch, transformers, peft).
A fixed stacklevel pointed into the package whenever a warning was reached through another path:
quantize() -> quantize_static -> the calibrator, a forward through nn.Module's call, an import."""
from __future__ import annotations

import os
import sys
import warnings
from typing import Tuple, Type

import torch

from .dynamo_hooks import when_dynamo_imported

__all__ = ["warn_at_caller"]

_OWN = (os.path.dirname(os.path.abspath(__file__)) + os.sep, os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
        "<frozen ")
_THROUGH = ("transformers", "peft")  # libraries that call mono-quant on the user's behalf (when imported)


def warn_at_caller(message, category: Type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the first frame outside mono-quant, torch and
    the libraries in _THROUGH (the module-level code warning, when every frame is inside).  Runs
    outside dynamo (``_OUTSIDE_DYNAMO``, a torch.compiler.disable of _warn made when dynamo is
    imported: traced, ``sys._getframe`` broke the graph there and the frames counted were another
    nesting's)."""
    (_OUTSIDE_DYNAMO or _warn)(message, category)


_OUTSIDE_DYNAMO = None


def _keep_out_of_dynamo() -> None:
    global _OUTSIDE_DYNAMO
    _OUTSIDE_DYNAMO = torch.compiler.disable(_warn)


def _warn(message, category: Type[Warning]) -> None:
    skipped = _skipped_prefixes()
    frame, level = sys._getframe(1), 2  # (level 1: this function; 2: its caller)
    while frame is not None and frame.f_code.co_filename.startswith(skipped):
        frame = frame.f_back
        # (warnings.warn does not count importlib's bootstrap frames, in an import, as levels)
        if frame is not None and not _importlib_internal(frame.f_code.co_filename):
            level += 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)


def _skipped_prefixes() -> Tuple[str, ...]:
    found = []
    for name in _THROUGH:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            found.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    return _OWN + tuple(found)


def _importlib_internal(filename: str) -> bool:
    return "importlib" in filename and "_bootstrap" in filename


when_dynamo_imported(_keep_out_of_dynamo)
