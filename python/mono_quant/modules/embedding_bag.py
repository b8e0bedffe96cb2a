"""QuantizedEmbeddingBag: replaces nn.EmbeddingBag when ``quantize(..., embeddings=True)``.

Recommendation models keep most of their bytes in EmbeddingBag tables (sums or means of the rows of
a bag of ids).  The table is stored as a QuantizedEmbedding's is; a call dequantizes the rows its
bags read (modules/embedding.py ``lookup_rows``) and reduces them with torch's own
``F.embedding_bag`` over those rows: offsets, ``include_last_offset``, ``per_sample_weights``,
``padding_idx`` and the three modes keep torch's semantics and checks, and the result is
nn.EmbeddingBag's on the dequantized table, bit for bit."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..formats import format_of
from ..orig_dtype import orig_dtype_of
from .embedding import lookup_rows
from .registry import QuantizedModule, register_qmodule

__all__ = ["QuantizedEmbeddingBag", "EMBEDDING_BAG_MODES"]

EMBEDDING_BAG_MODES = ("sum", "mean", "max")


@register_qmodule(nn.EmbeddingBag)
class QuantizedEmbeddingBag(QuantizedModule):
    """An nn.EmbeddingBag whose table is int8 (one scale per row), uint8, int4 (group-wise along the
    embedding dimension) or fp16/bf16; a call returns ``orig_dtype``.  Quantized only on request, as
    embeddings are: ``quantize(..., embeddings=True)``.

    Args:
        num_embeddings, embedding_dim, mode, padding_idx, include_last_offset: As for nn.EmbeddingBag.
        weight_format: "int8", "uint8", "int4", "fp16" or "bf16".
        orig_dtype: The table's float dtype, which calls return.

    Examples:
        >>> bag = nn.EmbeddingBag(100000, 64, mode="sum")
        >>> qmodel, _ = mq.quantize(nn.Sequential(bag), dtype="int8", embeddings=True)
        >>> qmodel[0](torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2])).shape
        torch.Size([2, 64])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, mode: str = "mean",
                 padding_idx: Optional[int] = None, include_last_offset: bool = False,
                 weight_format: str = "int8", orig_dtype: torch.dtype = torch.float32):
        if mode not in EMBEDDING_BAG_MODES:
            raise ValueError(f"mode must be one of {EMBEDDING_BAG_MODES}, got {mode!r}")
        super().__init__(weight_format, (num_embeddings, embedding_dim), orig_dtype)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.mode = mode
        self.padding_idx = padding_idx
        self.include_last_offset = bool(include_last_offset)

    def init_kwargs(self):
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "mode": self.mode,
                "padding_idx": self.padding_idx, "include_last_offset": self.include_last_offset,
                "weight_format": self.weight_format}

    @classmethod
    def from_float(cls, module: nn.EmbeddingBag, weight) -> "QuantizedEmbeddingBag":
        q = cls(module.num_embeddings, module.embedding_dim, module.mode, module.padding_idx,
                module.include_last_offset, weight_format=format_of(weight).name,
                orig_dtype=orig_dtype_of(module.weight.dtype))
        q.set_weight(weight)
        q.register_buffer("bias", None)
        q.train(module.training)
        return q

    def forward(self, input: torch.Tensor, offsets: Optional[torch.Tensor] = None,
                per_sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        try:
            rows = lookup_rows(self, input)  # (the ids' dtype and range checked as nn.Embedding checks them)
        except IndexError as exc:  # an id outside the table: nn.EmbeddingBag's RuntimeError, not nn.Embedding's
            raise RuntimeError(f"{exc} (an EmbeddingBag's input)") from None
        count = input.numel()
        # Each id's own row: bags read positions 0 .. count - 1 of `rows`; an id equal to padding_idx
        # reads the appended zero row instead, which torch's padding_idx leaves out of its bag.
        local = torch.arange(count, dtype=input.dtype, device=input.device).reshape(input.shape)
        table = rows.reshape(count, self.embedding_dim)
        padding = None
        if self.padding_idx is not None:
            local = torch.where(input == self.padding_idx, torch.full_like(local, count), local)
            table = torch.cat([table, table.new_zeros(1, self.embedding_dim)])
            padding = count
        return F.embedding_bag(local, table, offsets, mode=self.mode, per_sample_weights=per_sample_weights,
                               include_last_offset=self.include_last_offset, padding_idx=padding)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}, padding_idx={self.padding_idx}, "
                + super().extra_repr())
