"""A static conv's padding: what its kernels pad, and what is padded on the codes before them.

nn.Conv1d / nn.Conv2d pad each spatial dimension in ``padding_mode`` (zeros, reflect, replicate,
circular): by ``padding`` at both ends, not at all for 'valid', and for 'same' (stride 1) by
``dilation * (kernel - 1)`` in all, split evenly where even and, where odd, with one more at the end.
The static kernels pad both ends alike with the input's zero-point, so a conv of zeros padding, equal
at both ends, hands them its padding.  Any other padding (a mode other than zeros, or an uneven
'same') is made on the int8 codes before the kernels (StaticConv2d's ``pads``): quantizing is per
element, so reflecting, repeating or wrapping the codes (or writing the zero-point, the code of 0)
gives the codes of the float input torch's conv pads, bit for bit."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

__all__ = ["PADDING_MODES", "LINE_COPIES", "conv_pads", "padded_sides", "static_padding", "pad_codes", "pads_problem"]

#: nn.Conv2d's padding modes, each one the static layers take
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
#: pad_codes copies up to this many padded lines of a side one by one, more with one gather
LINE_COPIES = 8


def conv_pads(conv: nn.Module) -> Tuple[Tuple[int, int], ...]:
    """(before, after) of each spatial dimension of ``conv``, as torch pads it: a mode other than zeros
    by ``_reversed_padding_repeated_twice``, fixed when the layer was made (its forward pads by that
    whatever ``padding`` / ``dilation`` were set to later: a DeepLab-style output-stride change); zeros by
    the current ``padding`` ('same' from the current kernel and dilation, as F.conv2d reads it)."""
    fixed = getattr(conv, "_reversed_padding_repeated_twice", None)
    if conv.padding_mode != "zeros" and fixed is not None and len(fixed) == 2 * len(conv.kernel_size):
        return tuple((int(fixed[2 * i]), int(fixed[2 * i + 1])) for i in reversed(range(len(conv.kernel_size))))
    padding = conv.padding
    if not isinstance(padding, str):
        return tuple((int(p), int(p)) for p in padding)
    if padding == "valid":
        return ((0, 0),) * len(conv.kernel_size)
    totals = [d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation)]
    return tuple((t // 2, t - t // 2) for t in totals)


def padded_sides(conv: nn.Module) -> Tuple[str, Tuple[int, ...]]:
    """(mode, the (before, after) pairs flattened) of ``conv``'s padding; "zeros" where it pads nothing."""
    sides = tuple(v for side in conv_pads(conv) for v in side)
    return ("zeros" if not any(sides) else conv.padding_mode), sides


def static_padding(conv: nn.Module) -> Tuple[Tuple[int, ...], str, Optional[Tuple[int, ...]]]:
    """``(padding, padding_mode, pads)`` of a static layer made from ``conv``: the kernels' padding
    per spatial dimension (zero where ``pads`` does it), and ``pads``, the (before, after) pairs of
    every dimension flattened (a Conv2d's (top, bottom, left, right)) that are padded on the codes
    in ``padding_mode`` first, or None."""
    sides = conv_pads(conv)
    if not any(a or b for a, b in sides):
        return (0,) * len(sides), "zeros", None
    if conv.padding_mode == "zeros" and all(a == b for a, b in sides):
        return tuple(a for a, _ in sides), "zeros", None
    return (0,) * len(sides), conv.padding_mode, tuple(v for side in sides for v in side)


def pads_problem(mode: str, pads: Tuple[int, int, int, int], height: int, width: int) -> Optional[str]:
    """Why an NHWC image of ``height`` x ``width`` can't be padded by ``pads`` in ``mode`` (torch's
    own conditions: reflect pads less than the size, circular at most the size), or None."""
    top, bottom, left, right = pads
    if mode == "reflect" and (max(top, bottom) >= height or max(left, right) >= width):
        return (f"padding_mode 'reflect' pads (top, bottom, left, right) {tuple(pads)}, which must each be less "
                f"than the input's size (height {height}, width {width}), as torch's conv requires")
    if mode == "circular" and (max(top, bottom) > height or max(left, right) > width):
        return (f"padding_mode 'circular' pads (top, bottom, left, right) {tuple(pads)}, which must each be at "
                f"most the input's size (height {height}, width {width}), as torch's conv requires")
    if mode in ("replicate", "reflect", "circular") and (height == 0 or width == 0):
        return f"padding_mode {mode!r} can't pad an empty input (height {height}, width {width})"
    return None


def _source(i: int, size: int, mode: str) -> int:
    """The input position that position ``i`` of a padded dimension (negative before the input, ``size``
    or more after it) copies.  (Python ints: a torch op per side cost ~20 us, 4x the copies.)"""
    if mode == "replicate":
        return min(max(i, 0), size - 1)
    if mode == "circular":
        return i % size
    return -i if i < 0 else 2 * (size - 1) - i if i >= size else i  # reflect (the edge not repeated)


def _fill_border(out: torch.Tensor, dim: int, start: int, size: int, before: int, after: int, mode: str) -> None:
    """The ``before`` / ``after`` positions around [start, start + size) along ``dim`` of ``out`` copied from
    the ones they repeat: one strided copy a line up to LINE_COPIES a side (advanced indexing, or
    index_select of the whole image, took 4-10x as long at paddings of 1-3), one index_select past that
    (a file's pads may be up to 2^20: a Python loop per line would be seconds a call)."""
    for lines in (range(-before, 0), range(size, size + after)):
        source = [start + _source(i, size, mode) for i in lines]
        if len(lines) > LINE_COPIES:
            out.narrow(dim, start + lines.start, len(lines)).copy_(out.index_select(dim, torch.tensor(source)))
        else:
            for i, src in zip(lines, source):
                out.select(dim, start + i).copy_(out.select(dim, src))


def pad_codes(xq: torch.Tensor, pads: Tuple[int, int, int, int], mode: str, zp: int) -> torch.Tensor:
    """NHWC int8 codes ``xq`` padded by ``pads`` (top, bottom, left, right) in ``mode``: zeros
    writes ``zp`` (the code of 0.0), the others copy codes (pads_problem says when they can't).
    The input is copied once into the middle, then the border rows (whole rows: their border columns
    are written next), then the border columns of every row, corners included (_fill_border)."""
    top, bottom, left, right = pads
    b, h, w, c = xq.shape
    shape = (b, h + top + bottom, w + left + right, c)
    out = torch.full(shape, zp, dtype=xq.dtype) if mode == "zeros" else torch.empty(shape, dtype=xq.dtype)
    out[:, top:top + h, left:left + w] = xq
    if mode != "zeros":
        _fill_border(out, 1, top, h, top, bottom, mode)
        _fill_border(out, 2, left, w, left, right, mode)
    return out
