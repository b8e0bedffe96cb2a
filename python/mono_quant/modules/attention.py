"""QuantizedMultiheadAttention: replaces nn.MultiheadAttention as a whole.

The input projection is one QuantizedLinear ``in_proj`` (weight ``[3E, E]``) when query,
key and value share the embedding size, else three (``q_proj``, ``k_proj``, ``v_proj``,
for ``kdim`` / ``vdim``); the output projection is the QuantizedLinear ``out_proj``.  The
attention itself (masks, softmax, dropout) runs in torch as F.multi_head_attention_forward
does: F.scaled_dot_product_attention without weights, an explicit softmax with them.

``add_zero_attn=True`` (a zero key and value appended to every sequence) holds no tensor.
``add_bias_kv=True`` appends the learned ``bias_k`` / ``bias_v`` (``[1, 1, E]`` each) to the
projected keys and values: they stay float ``nn.Parameter``s of this module under the float
module's names (:meth:`float_parameters`), so ``save`` / ``load`` and Hugging Face folders
carry them as any float parameter.

The fast paths of nn.TransformerEncoderLayer / nn.TransformerEncoder read the float
``in_proj_weight`` and call a fused kernel; ``_qkv_same_embed_dim`` is False here and
``in_proj_weight`` (a dequantized copy) is a tensor subclass, so both take their slow
path, which calls this module.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .composite import ChildSpec, QuantizedComposite
from .input_checks import check_float_input
from .registry import register_qmodule

__all__ = ["QuantizedMultiheadAttention", "DequantizedInProjWeight"]


class DequantizedInProjWeight(torch.Tensor):
    """The dequantized ``in_proj_weight`` (a copy, read-only in effect).  Being a tensor
    subclass makes torch's Transformer fast paths (``has_torch_function`` of their
    arguments) decline and call this module instead of a fused float kernel."""


@register_qmodule(nn.MultiheadAttention)
class QuantizedMultiheadAttention(QuantizedComposite):
    """nn.MultiheadAttention with quantized projections: same forward signature
    (query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
    is_causal), outputs and weights as the float module up to quantization.

    ``_qkv_same_embed_dim`` is False on purpose: torch's Transformer layers test it to pick
    their fused fast path, which would need the float ``in_proj_weight``."""

    _qkv_same_embed_dim = False

    def _configure(self, module: nn.MultiheadAttention) -> None:
        self.embed_dim = module.embed_dim
        self.kdim, self.vdim = module.kdim, module.vdim
        self.num_heads = module.num_heads
        self.head_dim = module.head_dim
        self.dropout = float(module.dropout)
        self.batch_first = module.batch_first
        self.packed_in_proj = bool(module._qkv_same_embed_dim)
        self.add_zero_attn = bool(module.add_zero_attn)
        self.register_parameter("bias_k", None)  # from_float / shell set them with add_bias_kv=True
        self.register_parameter("bias_v", None)

    @classmethod
    def child_specs(cls, module: nn.MultiheadAttention) -> List[ChildSpec]:
        bias = module.in_proj_bias
        if module._qkv_same_embed_dim:
            specs = [("in_proj", module.in_proj_weight, bias)]
        else:
            parts = (None, None, None) if bias is None else bias.chunk(3)
            specs = [(f"{p}_proj", getattr(module, f"{p}_proj_weight"), b) for p, b in zip("qkv", parts)]
        return specs + [("out_proj", module.out_proj.weight, module.out_proj.bias)]

    @classmethod
    def float_parameters(cls, module: nn.MultiheadAttention) -> Dict[str, Optional[torch.Tensor]]:
        return {"bias_k": module.bias_k, "bias_v": module.bias_v}

    @classmethod
    def skip_reason(cls, module: nn.MultiheadAttention) -> Optional[str]:
        if (module.bias_k is None) != (module.bias_v is None):
            return "nn.MultiheadAttention with only one of bias_k / bias_v set (torch's forward refuses it): kept float"
        for name, p in cls.float_parameters(module).items():
            if p is not None and (p.device.type == "meta" or not p.is_floating_point()):
                return f"{name} is {'on the meta device' if p.device.type == 'meta' else p.dtype}: kept float"
        return super().skip_reason(module)

    @property
    def in_proj_bias(self) -> Optional[torch.Tensor]:
        if self.packed_in_proj:
            return self.in_proj.bias
        biases = [getattr(self, f"{p}_proj").bias for p in "qkv"]
        return None if biases[0] is None else torch.cat(biases)

    @property
    def in_proj_weight(self) -> Optional[torch.Tensor]:
        """The dequantized ``[3E, E]`` input projection (None with kdim / vdim, as nn.MultiheadAttention)."""
        if not self.packed_in_proj:
            return None
        return self.in_proj.dequantized_weight(torch.float32).as_subclass(DequantizedInProjWeight)

    @property
    def q_proj_weight(self) -> Optional[torch.Tensor]:
        return self._separate_proj_weight("q")

    @property
    def k_proj_weight(self) -> Optional[torch.Tensor]:
        return self._separate_proj_weight("k")

    @property
    def v_proj_weight(self) -> Optional[torch.Tensor]:
        return self._separate_proj_weight("v")

    def _separate_proj_weight(self, part: str) -> Optional[torch.Tensor]:
        """The dequantized q / k / v projection with kdim / vdim (None without, as nn.MultiheadAttention)."""
        if self.packed_in_proj:
            return None
        return getattr(self, f"{part}_proj").dequantized_weight(torch.float32).as_subclass(DequantizedInProjWeight)

    def extra_repr(self) -> str:
        s = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"
        s += ", add_bias_kv=True" if self.bias_k is not None else ""
        return s + (", add_zero_attn=True" if self.add_zero_attn else "")

    # -- forward -------------------------------------------------------------------------------------
    def _project(self, query, key, value):
        """q, k, v ``[L or S, B, E]`` from the inputs: one matmul for self-attention."""
        if not self.packed_in_proj:
            return self.q_proj(query), self.k_proj(key), self.v_proj(value)
        e = self.embed_dim
        if query is key and key is value:
            return self.in_proj(query).chunk(3, dim=-1)
        if key is value:  # encoder-decoder attention: k and v from one call (its q part is unused)
            q = self.in_proj(query)[..., :e]
            return (q, *self.in_proj(key)[..., e:].chunk(2, dim=-1))
        return self.in_proj(query)[..., :e], self.in_proj(key)[..., e:2 * e], self.in_proj(value)[..., 2 * e:]

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False):
        for x in (query, key, value):
            check_float_input(x, type(self).__name__)
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise AssertionError(f"query, key and value must all be 2-D (unbatched) or 3-D (batched), got "
                                 f"{query.dim()}-D, {key.dim()}-D and {value.dim()}-D")
        same_kv = key is value
        same_qkv = query is key and same_kv
        if not batched:
            query = query.unsqueeze(1)
            key = query if same_qkv else key.unsqueeze(1)
            value = key if same_kv else value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query = query.transpose(0, 1)
            key = query if same_qkv else key.transpose(0, 1)
            value = key if same_kv else value.transpose(0, 1)
        tgt_len, bsz, embed_dim = query.shape
        src_len = key.shape[0]
        if embed_dim != self.embed_dim:
            raise AssertionError(f"was expecting embedding dimension of {self.embed_dim}, but got {embed_dim}")
        if key.shape[:2] != value.shape[:2]:
            raise AssertionError(f"key's sequence and batch dims {tuple(key.shape[:2])} do not match value's "
                                 f"{tuple(value.shape[:2])}")
        dtype = query.dtype
        key_padding_mask = _as_float_mask(key_padding_mask, "key_padding_mask", dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                               "method `generate_square_subsequent_mask` to create this mask.")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # SDPA makes the causal mask itself
        else:
            attn_mask = _as_float_mask(attn_mask, "attn_mask", dtype)
            if key_padding_mask is not None:
                is_causal = False
        q, k, v = self._project(query, key, value)
        heads, head_dim = self.num_heads, self.head_dim
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                if tuple(attn_mask.shape) != (tgt_len, src_len):
                    raise RuntimeError(f"The shape of the 2D attn_mask is {attn_mask.shape}, but should be "
                                       f"{(tgt_len, src_len)}.")
                attn_mask = attn_mask.unsqueeze(0)
            elif attn_mask.dim() == 3:
                if tuple(attn_mask.shape) != (bsz * heads, tgt_len, src_len):
                    raise RuntimeError(f"The shape of the 3D attn_mask is {attn_mask.shape}, but should be "
                                       f"{(bsz * heads, tgt_len, src_len)}.")
            else:
                raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
        if self.bias_k is not None:  # a learned key / value after each sequence (F.multi_head_attention_forward)
            k = torch.cat([k, self.bias_k.to(k.dtype).expand(1, bsz, -1)])
            v = torch.cat([v, self.bias_v.to(v.dtype).expand(1, bsz, -1)])
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
            src_len += 1
        # [B*H, L, head_dim], the layout F.multi_head_attention_forward uses
        q = q.reshape(tgt_len, bsz * heads, head_dim).transpose(0, 1)
        k = k.reshape(src_len, bsz * heads, head_dim).transpose(0, 1)
        v = v.reshape(src_len, bsz * heads, head_dim).transpose(0, 1)
        if self.add_zero_attn:  # a zero key / value after each sequence, never masked (F.multi_head_attention_forward)
            zeros = k.new_zeros(bsz * heads, 1, head_dim)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
            src_len += 1
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (bsz, src_len):
                raise AssertionError(f"expecting key_padding_mask shape of {(bsz, src_len)}, but got "
                                     f"{tuple(key_padding_mask.shape)}")
            kpm = key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, heads, -1, -1).reshape(bsz * heads, 1, src_len)
            attn_mask = kpm if attn_mask is None else attn_mask + kpm
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            scores = torch.bmm(q * math.sqrt(1.0 / head_dim), k.transpose(-2, -1))
            if attn_mask is not None:
                scores = scores + attn_mask
            weights = torch.softmax(scores, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out = torch.bmm(weights, v).transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
            weights = weights.view(bsz, heads, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            weights = None
            if attn_mask is not None:
                attn_mask = attn_mask.unsqueeze(0) if attn_mask.size(0) == 1 else attn_mask.view(bsz, heads, -1, src_len)
            out = F.scaled_dot_product_attention(q.view(bsz, heads, tgt_len, head_dim),
                                                 k.view(bsz, heads, src_len, head_dim),
                                                 v.view(bsz, heads, src_len, head_dim), attn_mask, dropout_p,
                                                 is_causal)
            out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim)
        out = self.out_proj(out).view(tgt_len, bsz, embed_dim)  # (not -1: an empty batch has no size to infer)
        if not batched:
            out = out.squeeze(1)
            if weights is not None:
                weights = weights.squeeze(0)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _as_float_mask(mask: Optional[torch.Tensor], name: str, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """A bool mask (True: not attended) as an additive float mask of ``dtype``; a float mask as it is."""
    if mask is None:
        return None
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise AssertionError(f"only bool and floating types of {name} are supported")
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    return mask
