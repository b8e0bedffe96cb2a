"""Built-in example models for ``mono-quant demo`` and the tests: a small
transformer-like stack of Linear layers and a small conv net, both with
deterministic weights (seeded), so every run prints the same figures."""
from __future__ import annotations

import math
import sys
from typing import List, Tuple

import torch
from torch import nn

from .api import quantize
from .report import human_bytes
from .timing import interleaved_medians

__all__ = ["TransformerLike", "SmallConvNet", "demo_models", "output_sqnr_db", "run_demo", "run_speed"]


class MLPBlock(nn.Module):
    """Pre-norm residual MLP block, the shape of a transformer's feed-forward half."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.down = nn.Linear(hidden, dim)

    def forward(self, x):
        return x + self.down(self.act(self.up(self.norm(x))))


class TransformerLike(nn.Module):
    """An input projection, ``depth`` MLP blocks in a ModuleList, and a head."""

    def __init__(self, dim: int = 256, hidden: int = 1024, depth: int = 4, out: int = 64):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList([MLPBlock(dim, hidden) for _ in range(depth)])
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out))

    def forward(self, x):
        x = self.proj(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class SmallConvNet(nn.Module):
    """Conv2d layers with stride, padding, groups (a depthwise one) and a Linear classifier."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.ReLU(),
            nn.Conv2d(64, 128, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(128, classes)

    def forward(self, x):
        return self.classifier(self.features(x))


def _seeded(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def demo_models() -> List[Tuple[str, nn.Module, torch.Tensor]]:
    """(name, model, example input) for each built-in model, deterministic."""
    g = torch.Generator().manual_seed(0)
    return [
        ("transformer-like", _seeded(TransformerLike(), 1), torch.randn(8, 256, generator=g)),
        ("conv-net", _seeded(SmallConvNet(), 2), torch.randn(2, 3, 32, 32, generator=g)),
    ]


def output_sqnr_db(reference: torch.Tensor, output: torch.Tensor) -> float:
    ref = reference.detach().double()
    noise = (ref - output.detach().double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def run_demo(dtypes=("int8", "int4", "fp16", "bf16"), file=None) -> List[dict]:
    """Quantize each demo model to each dtype; print a table; return the rows."""
    out = file or sys.stdout
    rows = []
    for model_name, model, x in demo_models():
        with torch.no_grad():
            ref = model(x)
        for dtype in dtypes:
            result = quantize(model, dtype=dtype)
            with torch.no_grad():
                y = result.model(x)
            rows.append({
                "model": model_name, "dtype": dtype, "layers": len(result.report.layers),
                "skipped": [tuple(s) for s in result.skipped],
                "bytes_before": result.report.model_bytes_before, "bytes_after": result.report.model_bytes_after,
                "output_sqnr_db": output_sqnr_db(ref, y),
            })
    header = f"{'model':<18}{'dtype':<7}{'layers':>7}{'skipped':>9}   {'size before -> after':<26}{'output SQNR':>12}"
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in rows:
        size = f"{human_bytes(r['bytes_before'])} -> {human_bytes(r['bytes_after'])}"
        print(f"{r['model']:<18}{r['dtype']:<7}{r['layers']:>7}{len(r['skipped']):>9}   {size:<26}"
              f"{r['output_sqnr_db']:>9.1f} dB", file=out)
        for name, kind, reason in r["skipped"]:
            print(f"    skipped {name} ({kind}): {reason}", file=out)
    return rows


def run_speed(batches=(1, 32), repeats: int = 30, file=None) -> List[dict]:
    """Time the transformer-like model in fp32 and int8 (dynamic and
    weight-only) on this machine, interleaved; print medians and ratios."""
    out = file or sys.stdout
    model = _seeded(TransformerLike(), 1)
    contenders = {"fp32": model, "int8 dynamic": quantize(model).model,
                  "int8 weight-only": quantize(model, activations=None).model}
    rows = []
    print(f"\nspeed, transformer-like ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M weights), "
          f"median of {repeats} interleaved calls:", file=out)
    for batch in batches:
        x = torch.randn(batch, 256, generator=torch.Generator().manual_seed(batch))
        seconds = interleaved_medians({name: (lambda m=m: m(x)) for name, m in contenders.items()}, repeats)
        med = {name: t * 1e6 for name, t in seconds.items()}
        line = ", ".join(f"{name} {us:.0f} us (x{med['fp32'] / us:.2f})" for name, us in med.items())
        print(f"  batch {batch:>3}: {line}", file=out)
        rows.append({"batch": batch, "median_us": med})
    return rows
