"""A small transformer-like model for the mixed-precision tests, quantized in three
calls: int4 MLPs, int8 attention (and an nn.MultiheadAttention), an fp16 head, and
one Linear (``extra``) left float."""
import warnings

import torch
from torch import nn

import mono_quant as mq
from mono_quant.modules.registry import QuantizedModule

__all__ = ["D", "Block", "Net", "float_model", "mixed", "formats"]

D = 64


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Sequential(nn.Linear(D, D), nn.Linear(D, D))
        self.norm = nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(self.norm(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.mha = nn.MultiheadAttention(D, 4, batch_first=True)
        self.extra = nn.Linear(D, D)  # left float by every call below
        self.head = nn.Linear(D, 32)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        x = x + self.mha(x, x, x, need_weights=False)[0]
        return self.head(x + self.extra(x))


def float_model():
    torch.manual_seed(0)
    return Net().eval()


def mixed(model):
    """int4 MLPs, int8 attention (and the MHA), fp16 head; ``extra`` stays float."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = mq.quantize(model, "int4", include=["blocks.*.mlp.*"])
        second = mq.quantize(first.model, "int8", include=["blocks.*.attn.*", "mha"])
        third = mq.quantize(second.model, "fp16", include=["head"])
    return first, second, third


def formats(model):
    """Each quantized module's name -> its weight format."""
    return {n: m.weight_format for n, m in model.named_modules() if isinstance(m, QuantizedModule)}
