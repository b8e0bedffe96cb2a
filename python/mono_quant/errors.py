"""The exceptions mono-quant raises on purpose, under one base class.

Every class here also derives from the built-in exception that code written
for earlier versions caught (``ValueError``), so ``except ValueError`` keeps
working; new code can catch :class:`MonoQuantError` for all of them.  This
module imports nothing from the package: every layer can raise these.
"""
from __future__ import annotations

from typing import Optional

__all__ = ["MonoQuantError", "ConfigError", "CheckpointError", "NonFiniteWeightError", "AlreadyQuantizedError"]


class MonoQuantError(Exception):
    """Base class of mono-quant's own error types (options, files, weights: also ValueErrors).

    Examples:
        >>> import mono_quant as mq
        >>> try:
        ...     mq.quantize(model, dtype="int3")
        ... except mq.MonoQuantError as exc:
        ...     print(exc)
    """


class ConfigError(MonoQuantError, ValueError):
    """An option or a config-file setting is invalid: an unknown dtype, a bad
    ``group_size``, an option the chosen format or path does not take.

    The message names the option, the value given and what would be valid
    (and the config file, when the value came from one).  Also raised when an
    ``include`` / ``exclude`` argument matches no layer of the model (a typo
    there would otherwise quantize everything, or nothing, silently).  A
    ``ValueError``.  What to do: fix the option the message names.

    Examples:
        >>> mq.quantize(model, dtype="int4", group_size=48)
        Traceback (most recent call last):
        mono_quant.errors.ConfigError: quantize(): int4 group_size must be a positive multiple of 32 ...
    """


class AlreadyQuantizedError(MonoQuantError, ValueError):
    """quantize() was given a state_dict that mono-quant already quantized, or a
    float state_dict with ``model=`` a model holding quantized layers (the
    state_dict's weights fill the float architecture).  A ``ValueError``.

    A *model* holding quantized layers is not refused: quantize() quantizes only
    its float layers and lists the others in ``skipped`` as already quantized
    (mixed precision).  A state_dict can't be mixed that way: its fp16 / bf16
    layers look like float entries and would be quantized twice, compounding
    the error.

    What to do: quantize the float state_dict; to quantize the float layers a
    quantized file left, load it into its model (``mq.load``) and quantize the
    model; to change a layer's format, start again from the float weights.

    Examples:
        >>> qmodel, _ = mq.quantize(model)
        >>> mq.quantize(qmodel.state_dict())
        Traceback (most recent call last):
        mono_quant.errors.AlreadyQuantizedError: the state_dict is already quantized by mono-quant (...)
    """


class CheckpointError(MonoQuantError, ValueError):
    """A checkpoint file is truncated, corrupted, from a newer format version,
    disagrees with its own manifest, or does not match the model it is loaded
    into.  The message names the file and the offending keys.  A ``ValueError``.

    What to do: re-create the file from the float model; check that the
    skeleton given to :func:`~mono_quant.load` is the same architecture (and
    config) as the saved model; upgrade mono-quant for a newer format version.

    Examples:
        >>> try:
        ...     qmodel = mq.load("model.mq.safetensors", model=MyModel())
        ... except mq.CheckpointError as exc:
        ...     print(exc)   # names the file and what is wrong
    """


class NonFiniteWeightError(MonoQuantError, ValueError):
    """A weight holds NaN or Inf.

    Raised by :func:`~mono_quant.quantize_weight`, and by
    :func:`~mono_quant.quantize` / :func:`~mono_quant.quantize_checkpoint`
    with ``nonfinite="error"`` (the message then names the layer and how to
    skip it).  A ``ValueError``.

    Args:
        message: What was found and what to do.
        row: The first output channel (row) holding NaN or Inf.
        layer: The layer's name (a module path or a state_dict key's prefix),
            or None when a lone tensor was quantized.
        what: What was found, for messages: "NaN or Inf", or finite values
            that the target dtype would store as Inf (fp16 beyond 65504).

    Attributes:
        row: The first output channel (row) holding NaN or Inf.
        layer: The layer's name, or None.
        what: What was found ("NaN or Inf" unless a cast would overflow).

    What to do: fix the checkpoint (a NaN usually comes from training), or
    pass ``nonfinite="skip"`` to leave those layers in float (listed in ``skipped``).

    Examples:
        >>> try:
        ...     mq.quantize(model)
        ... except mq.NonFiniteWeightError as exc:
        ...     print(exc.layer, exc.row)
    """

    def __init__(self, message: str, row: int, layer: Optional[str] = None, what: str = "NaN or Inf"):
        super().__init__(message)
        self.row = row
        self.layer = layer
        self.what = what
