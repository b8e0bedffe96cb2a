"""Which layers static int8 quantizes: ``include`` / ``exclude`` / ``min_weight_numel``, as the
dynamic path reads them (:mod:`mono_quant.selection`), and the layers an earlier quantize()
call quantized (kept as they are, listed in ``skipped``: mixed precision, :mod:`mono_quant.mixed`).

A layer not selected runs in float in the static model (nothing fused into it) and is in
``skipped`` with the reason; a pattern given as an argument that matches no layer is a
ConfigError, as for dynamic int8.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

from ..entries import nonfinite_layer_error, nonfinite_skip_reason
from ..mixed import already_quantized_skips, inside_quantized, quantized_layers
from ..modules import QMODULES
from ..report import SkippedLayer
from ..selection import selection_reason, too_small_reason
from ..strictness import check_patterns_match, holders_and_others

__all__ = ["StaticSelection"]


def _has_matrix(m: nn.Module) -> bool:
    return any(not isinstance(p, nn.parameter.UninitializedParameter) and p.dim() >= 2
               for p in m.parameters(recurse=False))


class StaticSelection:
    """The selection for one model (the private copy static int8 works on).

    Attributes:
        held: ids of the modules that are, or belong to, a layer quantized already.
        already: a SkippedLayer per layer quantized already (its format, kept as it is).
    """

    def __init__(self, model: nn.Module, cfg):
        self.cfg = cfg
        self.names_of: Dict[int, List[str]] = {}
        modules: Dict[int, nn.Module] = {}
        for name, m in model.named_modules(remove_duplicate=False):
            self.names_of.setdefault(id(m), []).append(name)
            modules[id(m)] = m
        quantized = quantized_layers(modules)
        self.held = frozenset(inside_quantized(modules))
        self.already: List[SkippedLayer] = list(already_quantized_skips(quantized, self.names_of, cfg).values())
        layers = {k for k, m in modules.items() if k in self.held or isinstance(m, tuple(QMODULES)) or _has_matrix(m)}
        layer_names = [n for k in layers for n in self.names_of[k]]
        check_patterns_match(cfg, layer_names, [modules[k] for k in layers], *holders_and_others(
            layer_names, [(n, m) for k, m in modules.items() if k not in layers for n in self.names_of[k]]))

    def keep_float(self, name: str, layer: nn.Module) -> Optional[str]:
        """Why the Conv2d / Linear ``layer`` (module path ``name``) stays float, or None to quantize it."""
        reason = selection_reason(self.cfg, self.names_of.get(id(layer), [name]), layer)
        if reason is None:
            reason = too_small_reason(layer.weight.numel(), self.cfg)
        if reason is None:
            reason = self._nonfinite_reason(name, layer)
        return reason

    def _nonfinite_reason(self, name: str, layer: nn.Module) -> Optional[str]:
        """nonfinite="skip": why a layer with NaN/Inf weights stays float; "error": raise naming it."""
        w = layer.weight.detach()
        bad = ~torch.isfinite(w.reshape(w.shape[0], -1)).all(dim=1) if w.numel() else torch.zeros(0, dtype=torch.bool)
        if not bool(bad.any()):
            return None
        exc = nonfinite_layer_error(name, type(layer).__name__, int(bad.nonzero()[0, 0]))
        if self.cfg.nonfinite == "skip":
            return nonfinite_skip_reason(exc)
        raise exc

    def already_reason(self) -> Optional[str]:
        """Why the model takes the per-layer path (it holds layers quantized already), or None."""
        if not self.already:
            return None
        shown = ", ".join(repr(s.name) for s in self.already[:4]) + (" ..." if len(self.already) > 4 else "")
        return (f"the model holds layers quantized already ({shown}): they are kept as they are, called as "
                "they are, and the float Conv2d / Linear layers are quantized one by one")
