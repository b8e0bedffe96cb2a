"""The packed layouts' constants, in one place (docs/formats.md).

The C kernels define the same numbers (csrc); everything in Python that sizes,
checks or walks a packed buffer reads them from here, never writes its own.
Once the C layout header exports them as ``_C.LAYOUT`` (a dict with these keys),
the literal below becomes ``from .. import _C`` and ``_LAYOUT = _C.LAYOUT``, so no
layout number is written twice.
"""
from __future__ import annotations

__all__ = ["PACKED_LAYOUT_VERSION", "INT8_PANEL_ROWS", "INT8_K_GROUP", "INT4_BLOCK", "INT4_BLOCK_BYTES",
           "round_up", "int8_packed_sizes", "int4_padded_cols"]

_LAYOUT = {
    "packed_layout_version": 1,  # weight_packed_info[0]: bumped when the int8 panel layout changes
    "int8_panel_rows": 16,       # output channels per int8 panel
    "int8_k_group": 4,           # input bytes of one channel kept together in a panel (one dot-product step)
    "int4_block": 32,            # int4 codes per packed block
    "int4_block_bytes": 16,      # bytes per int4 block (two codes per byte)
}

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
