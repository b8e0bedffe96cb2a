"""Registers mono-quant's quantizer with transformers as soon as both are imported, in either order.

A folder saved from a quantized model names ``quant_method: mono_quant`` in its config.json;
transformers loads it only while the quantizer is registered (``integrations/transformers.py``
does it on import).  Before, a script that ran ``import mono_quant`` and then ``from_pretrained``
of such a folder, without importing the integration, got transformers' "Unknown quantization
type ... we will skip the quantization" and a model of randomly initialized layers.  mono-quant
never imports transformers itself (its import costs seconds): until transformers' quantizers
(``transformers.quantizers``, which ``from_pretrained`` imports) are imported, a one-shot import
hook waits for them and registers right after (hooking ``transformers`` itself made every ``import
transformers`` load its quantizers and modelling code: a second more for a tokenizer-only script).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys

__all__ = ["register_when_transformers_imports"]

#: the module whose import is waited for: transformers' quantizers package, whose table (``.auto``)
#: and base class (``.base``) the integration imports (the package, not ``.auto``: its __init__
#: imports ``.auto`` first, so a registration right after ``.auto`` ran inside the package's import)
_TABLE = "transformers.quantizers"


def _register() -> None:
    try:
        from . import transformers as _integration  # noqa: F401  (registers on import)
    except Exception as exc:  # noqa: BLE001 - a transformers too old or broken: say so, never break its import
        # (logged: a warning raised inside transformers' import, under -W error, would break it)
        logging.getLogger("mono_quant").warning(
            "mono-quant could not register its quantizer with transformers (%s: %s); from_pretrained of "
            "mono-quant folders will not load them quantized", type(exc).__name__, exc)


class _AfterTransformersImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for transformers' quantizers package it takes the spec the other finders
    give and registers once that package has run (then leaves sys.meta_path)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TABLE:
            return None
        _remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _register()
        spec.loader.exec_module = exec_module  # (this spec's own loader object)
        return spec


def _remove(finder) -> None:
    try:
        sys.meta_path.remove(finder)
    except ValueError:
        pass


def register_when_transformers_imports() -> None:
    """Register now when transformers' quantizers are imported already, else once they are."""
    if _TABLE in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterTransformersImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformersImport())
