"""Quantized embedding tables in C (csrc/embedding.c): 8-bit codes (int8 / uint8, a scale and
zero-point per row or one for the table) and int4 rows (group-wise, as int4 weights store them).  A
lookup's rows dequantized, and an embedding bag reduced straight from the codes, with no float rows
made.  A row's values are the dequantized table's (``((float)q - zp) * scale``; int4:
``((float)code - zero / 16) * scale``); a bag adds its rows in order (a per-sample weight's product
fused into the add), a mean divides by the count, a maximum starts from the first row: torch's
F.embedding_bag's operations on that table.  A table is ``(arrays, keywords)`` for the C calls."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _C
from .settings import SETTINGS

__all__ = ["BAG_MODES", "eight_bit_table", "int4_table", "embedding_rows", "embedding_bag", "reference_embedding_bag"]

#: nn.EmbeddingBag's modes as the C kernel numbers them
BAG_MODES = {"sum": 0, "mean": 1, "max": 2}


def eight_bit_table(qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> Optional[tuple]:
    """The C kernels' table of an int8 / uint8 CPU table ``[num, dim]`` with a float32 scale and an
    int32 zero-point per row or one for the table, or None (another format, device or layout)."""
    if (qdata.device.type != "cpu" or qdata.dtype not in (torch.int8, torch.uint8) or qdata.dim() != 2
            or not qdata.is_contiguous() or scale.dtype != torch.float32 or zero_point.dtype != torch.int32
            or scale.dim() != 1 or scale.shape != zero_point.shape or scale.shape[0] not in (1, qdata.shape[0])
            or scale.device.type != "cpu" or zero_point.device.type != "cpu"):
        return None
    return (qdata.detach().numpy(), scale.detach().numpy(), zero_point.detach().numpy()), {}


def int4_table(qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, cols: int,
               group: int) -> Optional[tuple]:
    """The C kernels' table of an int4 CPU table (packed rows uint8 ``[num, kpad / 2]``, float16 scales
    and uint8 zero-points ``[num, groups]``, ``cols`` values a row, groups of ``group``), or None."""
    if (qdata.device.type != "cpu" or qdata.dtype != torch.uint8 or scale.dtype != torch.float16
            or zero_point.dtype != torch.uint8 or qdata.dim() != 2 or scale.dim() != 2
            or scale.shape != zero_point.shape or scale.device.type != "cpu" or zero_point.device.type != "cpu"):
        return None
    return (qdata.detach().numpy(), scale.detach().numpy(), zero_point.detach().numpy()), {"group": group, "cols": cols}


def embedding_rows(table, ids: torch.Tensor) -> torch.Tensor:
    """float32 ``[len(ids), dim]``: the rows ``ids`` (a 1-D CPU index tensor) of ``table``
    (eight_bit_table's).  IndexError for an id outside the table."""
    ids = ids.to(torch.int64).contiguous()
    arrays, kw = table
    return torch.from_numpy(_C.embedding_rows(*arrays, ids.numpy(), nthreads=SETTINGS.num_threads(), **kw))


def embedding_bag(table, ids: torch.Tensor, offsets: torch.Tensor, per_sample_weights: Optional[torch.Tensor],
                  mode: int, padding_idx: int, include_last_offset: bool) -> torch.Tensor:
    """float32 ``[bags, dim]``: the bags of ``ids`` (1-D) starting at ``offsets`` (1-D) over ``table``
    (eight_bit_table's), ``mode`` a BAG_MODES value, ``padding_idx`` -1 for none."""
    ids = ids.to(torch.int64).contiguous()
    offsets = offsets.to(torch.int64).contiguous()
    psw = None if per_sample_weights is None else per_sample_weights.detach().to(torch.float32).contiguous().numpy()
    arrays, kw = table
    return torch.from_numpy(_C.embedding_bag(*arrays, ids.numpy(), offsets.numpy(), psw, mode=mode,
                                             padding_idx=padding_idx, include_last_offset=include_last_offset,
                                             nthreads=SETTINGS.num_threads(), **kw))


def reference_embedding_bag(rows: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor,
                            per_sample_weights: Optional[torch.Tensor], mode: int, padding_idx: int,
                            include_last_offset: bool) -> torch.Tensor:
    """embedding_bag in torch, on the dequantized ``rows`` of ``ids`` (``[len(ids), dim]`` float32):
    the same operations in the same order (each id's row at its own position; one equal to
    ``padding_idx`` pointed at an appended zero row that torch's padding_idx leaves out).  The op's
    implementation off the CPU."""
    count, dim = ids.numel(), rows.shape[-1]
    local = torch.arange(count, dtype=torch.int64, device=rows.device)
    table, padding = rows.reshape(count, dim), None
    if padding_idx >= 0:
        local = torch.where(ids.reshape(-1) == padding_idx, torch.full_like(local, count), local)
        table, padding = torch.cat([table, table.new_zeros(1, dim)]), count
    mode_name = next(name for name, value in BAG_MODES.items() if value == mode)
    psw = None if per_sample_weights is None else per_sample_weights.to(rows.dtype)
    return torch.nn.functional.embedding_bag(local, table, offsets.to(torch.int64), mode=mode_name,
                                             per_sample_weights=psw, include_last_offset=include_last_offset,
                                             padding_idx=padding)
