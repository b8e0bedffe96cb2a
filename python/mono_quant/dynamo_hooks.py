"""Decorations that need ``torch._dynamo`` (``torch.compiler.disable``, ``assume_constant_result``),
made when torch._dynamo is imported rather than at ``import mono_quant``: importing it takes about
1 s, half of the package's import (and of every CLI command's start).  torch.compile and
torch.export import it before they trace anything, so each decoration is in place before dynamo
can meet the function it marks; the modules rebind their names then (callers read them as
globals at call time)."""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
from typing import Callable, List

__all__ = ["when_dynamo_imported"]

_DYNAMO = "torch._dynamo"
_WAITING: List[Callable[[], None]] = []
_LOCK = threading.Lock()


def when_dynamo_imported(apply: Callable[[], None]) -> None:
    """Run ``apply()`` once torch._dynamo is imported: now if it is, else right after its import
    (by whoever imports it first), before that import returns."""
    with _LOCK:
        if _DYNAMO not in sys.modules:
            _WAITING.append(apply)
            if not any(isinstance(finder, _DynamoFinder) for finder in sys.meta_path):
                sys.meta_path.insert(0, _DynamoFinder())
            return
    apply()


def _apply_waiting() -> None:
    with _LOCK:
        waiting = list(_WAITING)
        _WAITING.clear()
    for apply in waiting:
        apply()


class _DynamoFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for torch._dynamo it takes the spec the other finders give and runs
    the waiting decorations after that module's code."""

    def find_spec(self, name, path, target=None):
        if name != _DYNAMO:
            return None
        with _LOCK:
            if self in sys.meta_path:
                sys.meta_path.remove(self)  # (once: the other finders answer from here on)
        spec = importlib.util.find_spec(name)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_decorate(module):
            exec_module(module)
            setattr(sys.modules["torch"], "_dynamo", module)  # (the import binds it on return: the decorations read it)
            _apply_waiting()

        loader.exec_module = exec_then_decorate  # (this module's loader object only)
        return spec
