"""QuantizedEmbeddingBag: replaces nn.EmbeddingBag when ``quantize(..., embeddings=True)``.

Recommendation models keep most of their bytes in EmbeddingBag tables (sums or means of the rows of
a bag of ids).  The table is stored as a QuantizedEmbedding's is.  An int8 / uint8 table (a scale per
row or one for the table) or an int4 one is reduced straight from its codes in C (kernels/embedding.py: the rows'
operations torch's F.embedding_bag applies to the dequantized table, in the same order, with no
float rows made); other formats dequantize the rows their bags read and reduce them with torch's
F.embedding_bag.  Offsets, ``include_last_offset``, ``per_sample_weights`` (and its gradient),
``padding_idx`` and the three modes keep nn.EmbeddingBag's semantics and checks."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..formats import format_of, traced_forward
from ..formats.embedding_table import kept_table
from ..formats.int4_weight import effective_group
from ..kernels.embedding import BAG_MODES, embedding_bag, reference_embedding_bag
from ..orig_dtype import orig_dtype_of
from .embedding import lookup_rows
from .registry import QuantizedModule, register_qmodule

__all__ = ["QuantizedEmbeddingBag", "EMBEDDING_BAG_MODES"]

EMBEDDING_BAG_MODES = tuple(BAG_MODES)


@register_qmodule(nn.EmbeddingBag)
class QuantizedEmbeddingBag(QuantizedModule):
    """An nn.EmbeddingBag whose table is int8 (one scale per row), uint8, int4 (group-wise along the
    embedding dimension) or fp16/bf16; a call returns ``orig_dtype``.  Quantized only on request, as
    embeddings are: ``quantize(..., embeddings=True)``.

    Args:
        num_embeddings: As for nn.EmbeddingBag.
        embedding_dim: As for nn.EmbeddingBag.
        mode: As for nn.EmbeddingBag ("sum", "mean" or "max").
        padding_idx: As for nn.EmbeddingBag.
        include_last_offset: As for nn.EmbeddingBag.
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
        ids, starts, psw, include_last = self._arguments(input, offsets, per_sample_weights)
        group, padding = self._c_group(), -1 if self.padding_idx is None else self.padding_idx
        if group is not None:  # int8 / uint8 / int4 rows reduced straight from the codes (csrc/embedding.c)
            table = None if traced_forward.use_ops(input if psw is None else psw, self) else kept_table(self)
            try:
                out = torch.ops.mono_quant.embedding_bag_q(
                    ids, starts, psw, self.weight_qdata, self.weight_scale, self.weight_zero_point, group,
                    self.embedding_dim, BAG_MODES[self.mode], padding, include_last) if table is None else \
                    embedding_bag(table, ids, starts, psw, BAG_MODES[self.mode], padding, include_last)
            except IndexError as exc:  # an id outside the table: nn.EmbeddingBag's RuntimeError
                raise RuntimeError(f"{exc} (an EmbeddingBag's input)") from None
            return out.to(self.orig_dtype)
        try:  # other formats: the rows read, dequantized, reduced by torch
            rows = lookup_rows(self, ids)
        except IndexError as exc:
            raise RuntimeError(f"{exc} (an EmbeddingBag's input)") from None
        return reference_embedding_bag(rows, ids, starts, psw, BAG_MODES[self.mode], padding, include_last)

    def _c_group(self) -> Optional[int]:
        """The C kernels' group of this table: 0 for an int8 / uint8 one with a scale per row or one for
        the table, the group of an int4 one; None for the others (fp16 / bf16, a scale per column)."""
        if self.weight_format == "int4":
            return effective_group(self.embedding_dim, self.weight_group_size)
        return 0 if self.weight_format in ("int8", "uint8") and getattr(self, "weight_axis", 0) in (0, None) else None

    def _arguments(self, input, offsets, per_sample_weights):
        """(ids, offsets, per_sample_weights, include_last_offset) as 1-D bags, after nn.EmbeddingBag's
        checks (its exception types): a 2-D input is a batch of fixed-size bags."""
        if input.dtype not in (torch.int64, torch.int32):
            raise RuntimeError(f"embedding_bag ids must be int64 or int32, got {input.dtype}")
        psw = per_sample_weights
        if psw is not None:  # (torch's order of checks: the shape first)
            if psw.shape != input.shape:
                raise ValueError(f"embedding_bag: per_sample_weights ({tuple(psw.shape)}) must have the shape of "
                                 f"the input ({tuple(input.shape)})")
            if self.mode != "sum":
                raise NotImplementedError(f"embedding_bag: per_sample_weights is only supported for mode='sum' "
                                          f"(got mode={self.mode!r})")
            if psw.dtype != self.orig_dtype:  # (torch: the table's dtype)
                raise RuntimeError(f"embedding_bag: per_sample_weights of dtype {psw.dtype}, the table is "
                                   f"{self.orig_dtype}")
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError("if input is 2D, then offsets has to be None, as input is treated as a mini-batch "
                                 "of fixed length sequences")
            bags, size = input.shape
            if size == 0 and bags > 0:  # (nn.EmbeddingBag fails too: its bag starts step by the bag size)
                raise RuntimeError(f"embedding_bag: a 2-D input of {bags} bags of 0 ids; pass 1-D ids with offsets "
                                   f"for empty bags")
            starts = torch.arange(bags, dtype=torch.int64, device=input.device) * size
            return input.reshape(-1), starts, None if psw is None else psw.reshape(-1), False
        if input.dim() != 1:
            raise ValueError(f"input has to be 1D or 2D Tensor, but got Tensor of dimension {input.dim()}")
        if offsets is None or offsets.dim() != 1:
            raise ValueError("offsets has to be a 1D Tensor" + (" but got None" if offsets is None else ""))
        if offsets.dtype not in (torch.int64, torch.int32):  # (a float one would be truncated)
            raise RuntimeError(f"embedding_bag offsets must be int64 or int32, got {offsets.dtype}")
        if (self.include_last_offset and type(offsets) is torch.Tensor and offsets.device.type == "cpu"
                and not torch.compiler.is_compiling()
                and (offsets.numel() == 0 or int(offsets[-1]) != input.numel())):
            # torch's rule, which its modes read three ways when broken (sum stops at the last offset, mean
            # divides by the ids to the end, max reads them): refused for every format (the C kernel too)
            raise RuntimeError(f"include_last_offset: the last offset must be the number of ids ({input.numel()})")
        return input, offsets, psw, self.include_last_offset

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}, padding_idx={self.padding_idx}, "
                + super().extra_repr())
