"""Small helpers the formats' file checks share (``WeightFormat.check_*``, ``io.validate``):
one problem is a :class:`BadLayer`, which the loader turns into a CheckpointError naming
the layer and the file."""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["BadLayer", "need", "is_int", "spec", "first_bad", "value_at", "check_scales", "MIN_SCALE", "MAX_SCALE",
           "MIN_FP16_SCALE", "MAX_FP16_SCALE"]


class BadLayer(Exception):
    """One problem with a layer read from a file (its message says what)."""


def need(ok: bool, message) -> None:
    """Raise BadLayer(message) unless ``ok``; ``message`` may be a callable (built only on failure)."""
    if not ok:
        raise BadLayer(message() if callable(message) else message)


def is_int(value, low: Optional[int] = None) -> bool:
    """An int (not a bool), at least ``low`` when given."""
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def spec(t: torch.Tensor) -> str:
    """``int8[3, 4]``: a tensor's dtype and shape for messages."""
    return f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}"


def first_bad(mask: torch.Tensor) -> Optional[int]:
    """The flat index of the first true entry, or None."""
    flat = mask.reshape(-1)
    return int(flat.nonzero()[0, 0]) if bool(flat.any()) else None


def value_at(t: torch.Tensor, index: int):
    return t.reshape(-1)[index].item()


def _largest_scale() -> float:
    """The largest float32 scale whose 127 steps stay finite in float32."""
    scale = torch.tensor(torch.finfo(torch.float32).max) / 127.0
    while not bool(torch.isfinite(scale * 127.0)):
        scale = torch.nextafter(scale, torch.zeros(()))
    return float(scale)


#: the range of a weight scale our quantizers write (mq_choose_qparams): at least float32's
#: smallest normal number, at most what keeps int8's symmetric 127 steps finite.  A
#: subnormal scale loses bits and overflows its inverse; a larger one dequantizes to inf.
MIN_SCALE = float(torch.finfo(torch.float32).tiny)
MAX_SCALE = _largest_scale()


#: the same rule for int4's float16 group scales: every positive finite float16 (the int4 quantizer
#: writes 2**-24..65504).  The kernels widen them to float32, where a float16 subnormal is a normal
#: number: a layer of weights near 1e-5 has subnormal float16 scales and computes exactly.
MIN_FP16_SCALE = 2.0 ** -24
MAX_FP16_SCALE = float(torch.finfo(torch.float16).max)

_SCALE_RANGES = {
    torch.float32: (MIN_SCALE, MAX_SCALE, f"{MIN_SCALE:.4g}..{MAX_SCALE:.4g} (float32's normal numbers a "
                                          f"quantized float32 weight can have)"),
    torch.float16: (MIN_FP16_SCALE, MAX_FP16_SCALE, f"{MIN_FP16_SCALE:.4g}..{MAX_FP16_SCALE:.0f} (float16 group "
                                                    f"scales: every positive finite float16, as int4 writes them)"),
}


def check_scales(scale: torch.Tensor, name: str = "weight_scale") -> None:
    """BadLayer naming the first entry of ``scale`` outside the range quantizers write for its
    storage dtype (float32: MIN_SCALE..MAX_SCALE; float16: 2**-24..65504), NaN included."""
    low, high, shown = _SCALE_RANGES.get(scale.dtype, _SCALE_RANGES[torch.float32])
    s = scale.float()
    bad = first_bad(~((s >= low) & (s <= high)))
    need(bad is None, lambda: f"{name}[{bad}] = {value_at(scale, bad)}: scales must be finite, > 0 and in {shown}")
