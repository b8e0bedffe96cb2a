"""The packed layouts' constants, in one place (docs/formats.md).

The numbers are defined once, in the C layout header (csrc/layout.h), and
exported as ``_C.LAYOUT``; everything in Python that sizes, checks or walks a
packed buffer reads them from here, never writes its own.
"""
from __future__ import annotations

from .. import _C

__all__ = ["PACKED_LAYOUT_VERSION", "INT8_PANEL_ROWS", "INT8_K_GROUP", "INT4_BLOCK", "INT4_BLOCK_BYTES",
           "round_up", "int8_packed_sizes", "int4_padded_cols"]

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
