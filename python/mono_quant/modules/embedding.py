"""QuantizedEmbedding: replaces nn.Embedding when ``quantize(..., embeddings=True)``."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..formats import traced_forward
from ..formats import format_of
from ..orig_dtype import orig_dtype_of
from .registry import QuantizedModule, register_qmodule

__all__ = ["QuantizedEmbedding", "lookup_rows"]


@register_qmodule(nn.Embedding)
class QuantizedEmbedding(QuantizedModule):
    """An embedding table stored as int8 (one scale per row), int4 (group-wise
    along the embedding dimension) or fp16/bf16.  A lookup dequantizes only the
    rows it reads and returns ``orig_dtype`` (the table's float dtype).
    Embeddings are quantized only on request (they are often the largest tensor
    but also the most sensitive one): ``quantize(..., embeddings=True)``.

    Args:
        num_embeddings: Rows of the table, as for nn.Embedding.
        embedding_dim: Columns of the table, as for nn.Embedding.
        padding_idx: As for nn.Embedding.
        weight_format: "int8", "uint8", "int4", "fp16" or "bf16".
        orig_dtype: The table's float dtype, which lookups return.

    Examples:
        >>> qmodel, _ = mq.quantize(nn.Sequential(nn.Embedding(32000, 512)), dtype="int8", embeddings=True)
        >>> qmodel(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 512])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None,
                 weight_format: str = "int8", orig_dtype: torch.dtype = torch.float32):
        super().__init__(weight_format, (num_embeddings, embedding_dim), orig_dtype)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx

    def init_kwargs(self):
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "padding_idx": self.padding_idx, "weight_format": self.weight_format}

    @classmethod
    def from_float(cls, module: nn.Embedding, weight) -> "QuantizedEmbedding":
        q = cls(module.num_embeddings, module.embedding_dim, module.padding_idx, weight_format=format_of(weight).name,
                orig_dtype=orig_dtype_of(module.weight.dtype))
        q.set_weight(weight)
        q.register_buffer("bias", None)
        q.train(module.training)
        return q

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return lookup_rows(self, indices)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, " + super().extra_repr()


def lookup_rows(module, indices: torch.Tensor) -> torch.Tensor:
    """Rows ``indices`` of a quantized table (QuantizedEmbedding, QuantizedEmbeddingBag), dequantized
    (only those read), shaped ``[*indices.shape, embedding_dim]`` in ``orig_dtype``."""
    if traced_forward.use_ops(indices, module):  # graph capture: the torch.library ops
        return traced_forward.embedding_forward(module, indices)
    return module.format.embedding(module, indices)
