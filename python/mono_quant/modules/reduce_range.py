"""The ``reduce_range`` flag of the int8 layers with dynamic activations (QuantizedLinear,
QuantizedConv2d): activations quantized to 7 bits instead of 8, as torch.ao's and ONNX
Runtime's ``reduce_range``.  Opt-in (``quantize(..., reduce_range=True)``), default off.

Why: on AVX2 CPUs without VNNI (AMD Zen 2/3, Intel before Alder Lake) a uint8 code of
0..127 times an int8 weight never saturates ``vpmaddubsw``'s int16 pair sums, so the
kernel needs 3 instructions per 32 multiply-adds instead of the 4 of the exact 8-bit
path's sign trick (csrc/x86/avx2/linear_u7.c).  The price is one bit of activation
precision (each row: asymmetric scale and zero-point over 0..127, csrc/act_u7.c).  The
integers are the same on every kernel level, so results stay bit-identical across CPUs.

The flag only changes dynamic int8 activations: on a weight-only layer
(``activations=None``) it is kept but does nothing until the layer is dynamic again.
"""
from __future__ import annotations

__all__ = ["ReduceRange", "check_reduce_range"]


def check_reduce_range(weight_format, enabled) -> bool:
    """``enabled`` as a bool, checked against the layer's weight format.

    Raises:
        TypeError: ``enabled`` is not a bool.
        ValueError: ``enabled`` is True and the format has no dynamic int8 kernels
            (only packed int8 weights have them: not uint8, int4, fp16 or bf16).
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"reduce_range must be True or False, got {enabled!r}")
    if enabled and not getattr(weight_format, "packs", False):
        raise ValueError(f"reduce_range applies to int8 weights with dynamic activations only; this layer's "
                         f"weights are {weight_format.name}")
    return enabled


class ReduceRange:
    """Mixin of the int8 modules with a dynamic-activation mode: the ``reduce_range`` attribute
    (saved with the layer; False in files written before it existed) and its setter."""

    reduce_range: bool = False

    def set_reduce_range(self, enabled: bool) -> None:
        """Quantize this layer's dynamic activations to 7 bits (True) or 8 bits (False).

        Raises:
            TypeError / ValueError: see :func:`check_reduce_range`.
        """
        self.reduce_range = check_reduce_range(self.format, enabled)
