"""QuantizedEmbedding: replaces nn.Embedding when ``quantize(..., embeddings=True)``."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import _C, torch_ops
from ..kernels import num_threads, to_numpy
from .registry import QuantizedModule, register_qmodule

__all__ = ["QuantizedEmbedding"]

_INDEX_DTYPES = (torch.int64, torch.int32)  # what nn.Embedding takes


@register_qmodule(nn.Embedding)
class QuantizedEmbedding(QuantizedModule):
    """An embedding table stored as int8 (one scale per row), int4 (group-wise
    along the embedding dimension) or fp16/bf16.  A lookup dequantizes only the
    rows it reads and returns ``orig_dtype`` (the table's float dtype).
    Embeddings are quantized only on request (they are often the largest tensor
    but also the most sensitive one)."""

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
        from .linear import _format_of

        q = cls(module.num_embeddings, module.embedding_dim, module.padding_idx, weight_format=_format_of(weight),
                orig_dtype=module.weight.dtype)
        q.set_weight(weight)
        q.register_buffer("bias", None)
        q.train(module.training)
        return q

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        if torch_ops.use_ops(indices):  # graph capture: the torch.library ops
            return torch_ops.embedding_forward(self, indices)
        if self.qtype.kind != "int":
            return F.embedding(indices, self._buffers["weight"]).to(self.orig_dtype)
        if indices.dtype not in _INDEX_DTYPES:
            # torch's own error for every other dtype (a bool or uint8 tensor would index as a mask)
            F.embedding(indices, torch.empty(0, 0, device=indices.device))
            raise RuntimeError(f"embedding indices must be int64 or int32, got {indices.dtype}")
        flat = indices.reshape(-1)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(f"index out of range for an embedding of {self.num_embeddings} rows")  # as nn.Embedding
        qdata, scale, zero = self.weight_qdata[flat], self.weight_scale[flat], self.weight_zero_point[flat]
        if self.weight_format == "int4":
            qw = self.quantized_weight()
            if qdata.device.type == "cpu":
                rows = torch.from_numpy(_C.q4_dequantize(qdata.numpy(), to_numpy(scale), zero.numpy(),
                                                         self.embedding_dim, qw.group, nthreads=num_threads()))
            else:
                from ..int4 import unpack_int4

                rows = unpack_int4(qdata, scale, zero, self.embedding_dim, qw.group)
        else:  # int8 / uint8, one scale and zero-point per row (axis 0)
            rows = (qdata.float() - zero.float()[:, None]) * scale.float()[:, None]
        return rows.reshape(*indices.shape, self.embedding_dim).to(self.orig_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, " + super().extra_repr()
