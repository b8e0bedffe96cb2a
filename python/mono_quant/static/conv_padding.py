"""A static conv's padding as numbers: nn.Conv1d / nn.Conv2d also take the strings 'valid' and 'same'.

The static kernels pad each spatial dimension by the same amount at both ends.  'valid' is no
padding; 'same' (stride 1) pads ``dilation * (kernel - 1)`` in all, which torch splits evenly where
it is even and, where it is odd (an even kernel at an odd dilation), with one more at the end: that
last case is not a symmetric padding, so it stays float (with the reason)."""
from __future__ import annotations

from typing import Optional, Tuple

from torch import nn

__all__ = ["conv_padding", "padding_problem", "static_padding"]


def _same_totals(conv: nn.Module) -> Tuple[int, ...]:
    return tuple(d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation))


def conv_padding(conv: nn.Module) -> Optional[Tuple[int, ...]]:
    """The padding of each spatial dimension of ``conv`` (at both ends) as the static kernels run it:
    its numbers, zeros for 'valid', half the total for 'same'; None where 'same' pads unevenly."""
    padding = conv.padding
    if not isinstance(padding, str):
        return tuple(int(p) for p in padding)
    if padding == "valid":
        return (0,) * len(conv.kernel_size)
    totals = _same_totals(conv)
    if any(t % 2 for t in totals):
        return None
    return tuple(t // 2 for t in totals)


def padding_problem(conv: nn.Module) -> Optional[str]:
    """Why the static kernels can't pad as ``conv`` does (a padding mode other than zeros, or 'same'
    with an odd total padding), or None."""
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r}"
    if conv_padding(conv) is None:
        return (f"padding 'same' with kernel_size {tuple(conv.kernel_size)} and dilation {tuple(conv.dilation)}: "
                f"torch pads {_same_totals(conv)} in all, one more at the end where odd, and the static kernels pad "
                f"both ends alike (give an odd kernel, or numeric padding with a ZeroPad before the conv)")
    return None


def static_padding(conv: nn.Module, who: str) -> Tuple[int, ...]:
    """conv_padding of a conv the static kernels can pad (the static layers' from_float), else
    ValueError naming ``who`` and padding_problem's reason."""
    problem = padding_problem(conv)
    if problem:
        raise ValueError(f"{who}: {problem}")
    return conv_padding(conv)
