"""The packed layouts' constants, in one place (docs/formats.md), and the float
images' layout transpose.

The numbers are defined once, in the C layout header (csrc/layout.h), and
exported as ``_C.LAYOUT``; everything in Python that sizes, checks or walks a
packed buffer reads them from here, never writes its own.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import _C

__all__ = ["PACKED_LAYOUT_VERSION", "INT8_PANEL_ROWS", "INT8_K_GROUP", "INT4_BLOCK", "INT4_BLOCK_BYTES",
           "round_up", "int8_packed_sizes", "int4_padded_cols", "unpack_int8_rows", "transposed_planes"]

# the numbers themselves: csrc/layout.h, with the _Static_asserts that tie them together
_LAYOUT = _C.LAYOUT

PACKED_LAYOUT_VERSION: int = _LAYOUT["packed_layout_version"]
INT8_PANEL_ROWS: int = _LAYOUT["int8_panel_rows"]
INT8_K_GROUP: int = _LAYOUT["int8_k_group"]
INT4_BLOCK: int = _LAYOUT["int4_block"]
INT4_BLOCK_BYTES: int = _LAYOUT["int4_block_bytes"]


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple``."""
    return -(-value // multiple) * multiple


def int8_packed_sizes(rows: int, cols: int):
    """(bytes of the packed int8 weight, entries of its column sums) for a [rows, cols] weight."""
    panel_rows = round_up(rows, INT8_PANEL_ROWS)
    return panel_rows * round_up(cols, INT8_K_GROUP), panel_rows


def int4_padded_cols(cols: int) -> int:
    """Columns of an int4 row once zero-padded to whole blocks."""
    return round_up(cols, INT4_BLOCK)


def unpack_int8_rows(packed: torch.Tensor, groups: int, out_g: int, k: int) -> torch.Tensor:
    """The packed buffer back as int8 rows ``[groups, out_g, k]`` (K in the packed
    order).  Each 16-channel panel holds its K-groups of 4 bytes channel-interleaved:
    moving those 4-byte groups as int32 values makes the transpose 4x fewer (and
    word-sized) element moves than a byte-wise permute; the bytes are the same.  Not while
    torch.jit.trace records: its alias analysis has no schema for a dtype view (an INTERNAL
    ASSERT on a forward that reads an int8 layer's ``.weight``), so the byte-wise permute."""
    n_pad, k_pad = round_up(out_g, INT8_PANEL_ROWS), round_up(k, INT8_K_GROUP)
    if (packed.device.type == "cpu" and packed.is_contiguous() and packed.storage_offset() % 4 == 0
            and not torch.jit.is_tracing()):
        # (one int32 word is one K group of INT8_K_GROUP = 4 bytes)
        words = packed.view(torch.int32).reshape(groups * (n_pad // INT8_PANEL_ROWS), k_pad // INT8_K_GROUP,
                                                 INT8_PANEL_ROWS)
        rows = words.transpose(1, 2).contiguous().reshape(-1).view(torch.int8).reshape(groups, n_pad, k_pad)
    else:
        panels = packed.reshape(groups, n_pad // INT8_PANEL_ROWS, k_pad // INT8_K_GROUP, INT8_PANEL_ROWS,
                                INT8_K_GROUP)
        rows = panels.permute(0, 1, 3, 2, 4).reshape(groups, n_pad, k_pad)
    return rows[:, :out_g, :k]


def transposed_planes(x: np.ndarray, nthreads: int = 1) -> np.ndarray:
    """float32 ``x`` [b, r, c] as a new C-contiguous [b, c, r] array, each ``x[i]`` transposed in C
    (``_C.transpose_f32``: the level's 8 x 8 tiles, the same bits everywhere): NCHW <-> NHWC of a
    float image.  NumPy's transpose copy took 3-10x as long (about 1 float a nanosecond)."""
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    out = np.empty((x.shape[0], x.shape[2], x.shape[1]), dtype=np.float32)
    _C.transpose_f32(x, out, nthreads)
    return out
