"""QuantizationResult: what ``quantize()`` and ``quantize_checkpoint()`` return."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from .warn_site import warn_at_caller
from .config import QuantConfig
from .modules.whole_load import guard_whole_loads
from .report import Report, SkippedLayer

__all__ = ["QuantizationResult"]

# what quantize_checkpoint() returned before it returned a QuantizationResult
_OLD_REPORT_FIELDS = ("layers", "model_bytes_before", "model_bytes_after", "bytes_before", "bytes_after", "to_dict")


class QuantizationResult:
    """What :func:`~mono_quant.quantize` and :func:`~mono_quant.quantize_checkpoint` return.

    Unpacks as ``(model, skipped)``: the quantized model (a quantized
    state_dict in place of the model when a state_dict went in; None from
    ``quantize_checkpoint``, whose tensors are in the file at ``path``).

    Args:
        model: The quantized model, or None.
        skipped: The layers left in float, with the reason.
        report: Per-layer sizes and errors, totals.
        config: The options the quantization used.
        state_dict: The quantized tensors of a state_dict input.
        path: The file ``quantize_checkpoint`` wrote.

    Attributes:
        model: The quantized model (None for a state_dict input or a checkpoint).
        skipped: The :class:`SkippedLayer` list (also ``report.skipped``).
        report: The :class:`Report`.
        config: The :class:`QuantConfig` used.
        path: The output file of ``quantize_checkpoint`` (None otherwise).

    Examples:
        >>> qmodel, skipped = mq.quantize(model, dtype="int8")
        >>> result = mq.quantize_checkpoint("model.safetensors", "model-int8.safetensors")
        >>> print(result.report)
    """

    def __init__(self, model: Optional[nn.Module], skipped: List[SkippedLayer], report: Report,
                 config: QuantConfig, state_dict: Optional[Dict[str, torch.Tensor]] = None,
                 path: Optional[Path] = None):
        self.model = model
        guard_whole_loads(model)  # load_state_dict into it: every quantized layer checked before any copy
        self.skipped = skipped
        self.report = report
        self.config = config
        self.path = path
        self._state_dict = state_dict

    def __iter__(self):
        yield self.model if self.model is not None else self._state_dict
        yield self.skipped

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index):
        return tuple(self)[index]

    def __getattr__(self, name: str):
        # only called for names not found: the Report fields quantize_checkpoint() used to return
        if name in _OLD_REPORT_FIELDS:
            warn_at_caller(f"quantize_checkpoint() returns a QuantizationResult: use result.report.{name}",
                           DeprecationWarning)
            return getattr(self.report, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The quantized tensors by name (the model's state_dict, or the quantized state_dict).

        Returns:
            The tensors by name.

        Raises:
            TypeError: For the result of ``quantize_checkpoint``: its tensors
                are in the file (``mono_quant.load(result.path)``).
        """
        if self.model is not None:
            return self.model.state_dict()
        if self._state_dict is None:
            raise TypeError(f"the quantized tensors were written to {self.path}; read them with "
                            f"mono_quant.load({str(self.path)!r})")
        return self._state_dict

    def __repr__(self) -> str:
        what = type(self.model).__name__ if self.model is not None else (
            "state_dict" if self.path is None else f"file {str(self.path)!r}")
        return (f"QuantizationResult({what}, dtype={self.config.dtype}, "
                f"{len(self.report.layers)} quantized, {len(self.skipped)} skipped)")
