"""An embedding table's C kernel arrays (kernels/embedding.py: 8-bit codes or int4 rows), kept per layer.

Making the NumPy views and checking the buffers took ~15 us a call, as much as torch's whole
lookup of a few ids; the views are kept with the stamp (kernels/stamps.py) of the buffers they
were made from, so a replaced or rewritten buffer rebuilds them."""
from __future__ import annotations

from typing import Optional

from ..kernels.embedding import eight_bit_table, int4_table
from ..kernels.stamps import make_stamp, tensors_unchanged
from .int4_weight import effective_group
from .layer_cache import per_layer_cache

__all__ = ["kept_table"]

_TABLES = per_layer_cache()
_SOURCES = (("_buffers", "weight_qdata"), ("_buffers", "weight_scale"), ("_buffers", "weight_zero_point"),
            (None, "weight_axis"), (None, "weight_group_size"), (None, "weight_format"))


def kept_table(module) -> Optional[tuple]:
    """The C kernels' table (kernels/embedding.py) of an embedding layer's int8 / uint8 table with a
    scale per row or one for the table (weight_axis 0 or None), or of its int4 table, on the CPU; None
    for other formats and devices."""
    kept = _TABLES.get(module)
    if kept is None or not tensors_unchanged(module.__dict__, kept[0]):
        stamp = make_stamp(module, _SOURCES)
        table = None
        if "weight_qdata" in module._buffers and module.weight_format == "int4":
            table = int4_table(module.weight_qdata, module.weight_scale, module.weight_zero_point,
                               module.embedding_dim, effective_group(module.embedding_dim, module.weight_group_size))
        elif "weight_qdata" in module._buffers and getattr(module, "weight_axis", 0) in (0, None):
            table = eight_bit_table(module.weight_qdata, module.weight_scale, module.weight_zero_point)
            if table is not None and not table[0][2].any():  # symmetric codes: every zero-point 0, whose
                table = ((*table[0][:2], None), table[1])  # reads the kernels then skip (a random line a row)
        kept = (stamp, table)
        _TABLES[module] = kept
    return kept[1]
