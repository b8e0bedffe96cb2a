"""Quantize a BERT-style encoder to int8, int4 and fp16 and compare output quality and size.

    python examples/transformer_encoder.py [--small]
"""
import argparse

import torch
from torch import nn

import mono_quant as mq


class EncoderBlock(nn.Module):
    """Self-attention + MLP with pre-norm residuals, written with plain nn.Linear layers."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        att = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + self.out(att.transpose(1, 2).reshape(b, t, d))
        return x + self.down(nn.functional.gelu(self.up(self.norm2(x))))


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    noise = (reference - test).pow(2).sum()
    return float(10 * torch.log10(reference.pow(2).sum() / noise))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the test suite runs this)")
    args = parser.parse_args()
    torch.manual_seed(0)
    dim, layers, tokens = (64, 2, 16) if args.small else (384, 6, 128)
    model = nn.Sequential(*[EncoderBlock(dim, heads=4) for _ in range(layers)]).eval()
    x = torch.randn(2, tokens, dim)
    with torch.no_grad():
        reference = model(x)
        for options in ({"dtype": "int8"}, {"dtype": "int8", "activations": None},
                        {"dtype": "int4", "group_size": 32}, {"dtype": "fp16"}):
            result = mq.quantize(model, **options)
            report = result.report
            size = report.model_bytes_after / report.model_bytes_before
            print(f"{str(options):45s} output SQNR {sqnr_db(reference, result.model(x)):5.1f} dB, "
                  f"size {size:.3f}x of fp32")


if __name__ == "__main__":
    main()
