"""An LLM-style decoder built from a config, quantized to int4 for batch-1 decoding.

Weights are random (no download); a real model is loaded the same way and
quantized the same way.

    python examples/llm_from_config.py [--small]
"""
import argparse
import time
from dataclasses import dataclass

import torch
from torch import nn

import mono_quant as mq


@dataclass
class Config:
    vocab: int = 32000
    dim: int = 1024
    hidden: int = 2816
    layers: int = 4


class Block(nn.Module):
    """LLaMA-style MLP half of a decoder layer (gate/up/down projections, SiLU)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.norm = nn.RMSNorm(cfg.dim)
        self.gate = nn.Linear(cfg.dim, cfg.hidden, bias=False)
        self.up = nn.Linear(cfg.dim, cfg.hidden, bias=False)
        self.down = nn.Linear(cfg.hidden, cfg.dim, bias=False)

    def forward(self, x):
        h = self.norm(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


class Decoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.layers)])
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab, bias=False)

    def forward(self, tokens):
        return self.lm_head(self.blocks(self.embed(tokens)))


def per_token_ms(model: nn.Module, tokens: torch.Tensor, steps: int) -> float:
    with torch.no_grad():
        model(tokens)  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            model(tokens)
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the test suite runs this)")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = Config(vocab=512, dim=128, hidden=256, layers=2) if args.small else Config()
    model = Decoder(cfg).eval()

    # int4 weights, group 128 along the input dimension; embeddings=True also packs the table
    qmodel, skipped = mq.quantize(model, dtype="int4", group_size=128 if cfg.dim % 128 == 0 else 32,
                                  embeddings=True)
    tokens = torch.randint(0, cfg.vocab, (1, 1))  # batch-1 decode step
    with torch.no_grad():
        agree = torch.equal(model(tokens).argmax(-1), qmodel(tokens).argmax(-1))
    steps = 3 if args.small else 20
    print(f"next token agrees with fp32: {agree}; skipped: {[s.name for s in skipped]}")
    print(f"fp32 {per_token_ms(model, tokens, steps):.2f} ms/token, "
          f"int4 {per_token_ms(qmodel, tokens, steps):.2f} ms/token")


if __name__ == "__main__":
    main()
