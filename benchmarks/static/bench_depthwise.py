"""MobileNetV2-style inverted residual blocks under static int8, dynamic int8 and fp32, and the
static depthwise kernel alone at each kernel level.

The net: a 3x3 stem to 32 channels at 112x112, then inverted residual blocks (1x1 expand x6,
depthwise 3x3 with BatchNorm + ReLU6, 1x1 project, a residual add where the shape allows) at
56x56 (24 ch), 28x28 (32), 14x14 (64, 96), global pool, Linear (random weights, BatchNorm
statistics as a trained net's).  Times the three interleaved at batch 1 and 8 (ratios within
one run), and gives the static model's output SQNR against fp32.  Then `_C.depthwise_static`
alone on the net's depthwise shapes and a 1-D one, at the scalar level (the reference kernel,
what every CPU ran before the AVX2 twin) and the best level, interleaved, beside torch's fp32
depthwise conv.  ``--load N`` runs N busy processes beside it.

    python benchmarks/static/bench_depthwise.py [--threads 1] [--load 0] [--repeats 15]
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import background_load, interleaved, machine_info, summary, write_results  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant import _C  # noqa: E402


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 6):
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


def mobile_net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
        InvertedResidual(32, 24, 2), InvertedResidual(24, 24, 1),
        InvertedResidual(24, 32, 2), InvertedResidual(32, 32, 1),
        InvertedResidual(32, 64, 2), InvertedResidual(64, 64, 1), InvertedResidual(64, 96, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 10))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


# (channels, height, width, kernel): the net's depthwise layers (input sizes), and a 1-D one (a
# Conv1d of 256 channels, kernel 9, over 1000 samples: static int8 runs it as a width-1 image)
DEPTHWISE_SHAPES = [(192, 112, 112, (3, 3)), (144, 56, 56, (3, 3)), (192, 28, 28, (3, 3)), (384, 14, 14, (3, 3)),
                    (256, 1000, 1, (9, 1))]


def depthwise_alone(repeats: int, threads: int) -> list:
    rows = []
    g = torch.Generator().manual_seed(5)
    best = _C.cpu_info()["best_isa"]
    for c, h, w, ks in DEPTHWISE_SHAPES:
        stride = (2, 2) if (c, h) == (192, 112) else (1, 1)  # (the first block's depthwise is strided)
        pad = (ks[0] // 2, ks[1] // 2)
        x = torch.randint(-127, 128, (1, h, w, c), dtype=torch.int8, generator=g)
        wq = torch.randint(-127, 128, (ks[0], ks[1], c), dtype=torch.int8, generator=g)
        scale = np.full(c, 1e-3, np.float32)
        out_h, out_w = (h + 2 * pad[0] - ks[0]) // stride[0] + 1, (w + 2 * pad[1] - ks[1]) // stride[1] + 1
        out = np.empty((1, out_h, out_w, c), np.int8)
        xf = torch.randn(1, c, h, w)
        wf = torch.randn(c, 1, *ks)

        def kernel(level):
            def call():
                previous = _C.set_isa(level)
                try:
                    _C.depthwise_static(x.numpy(), wq.numpy(), None, scale, None, out, stride, pad, (1, 1), 0.0, 6.0,
                                        10.0, threads, -127, -127)
                finally:
                    _C.set_isa(previous)
            return call

        times = interleaved({"fp32 torch": lambda: F.conv2d(xf, wf, None, stride, pad, 1, c),
                             "static scalar": kernel("scalar"), f"static {best}": kernel(best)}, repeats=repeats)
        med = {k: summary(v)["median_us"] for k, v in times.items()}
        shape = f"{c}ch {h}x{w} k{ks[0]}x{ks[1]}" + (" s2" if stride == (2, 2) else "")
        rows.append({"shape": shape, **{f"{k}_us": v for k, v in med.items()}})
        print(f"depthwise {shape}: " + ", ".join(f"{k} {v:.0f} us" for k, v in med.items())
              + f"  ({best} x{med['static scalar'] / med[f'static {best}']:.1f} scalar, "
                f"x{med['fp32 torch'] / med[f'static {best}']:.2f} fp32)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--load", type=int, default=0, help="busy processes beside the benchmark")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = mobile_net()
    torch.manual_seed(1)
    calibration = [torch.randn(8, 3, 224, 224) for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        static = mq.quantize(model, "int8", activations="static", calibration=calibration)
        dynamic = mq.quantize(model, "int8").model
    probe = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        ref, got = model(probe), static.model(probe)
    sqnr = float(10 * torch.log10(ref.pow(2).mean() / (got - ref).pow(2).mean()))
    rows = []
    with background_load(args.load) if args.load else contextlib.nullcontext(), torch.no_grad():
        for batch in (1, 8):
            x = torch.randn(batch, 3, 224, 224)
            times = interleaved({"fp32": lambda: model(x), "static int8": lambda: static.model(x),
                                 "dynamic int8": lambda: dynamic(x)}, repeats=args.repeats)
            med = {k: summary(v)["median_us"] for k, v in times.items()}
            rows.append({"batch": batch, **{f"{k}_us": v for k, v in med.items()},
                         **{f"{k}_x_fp32": med["fp32"] / v for k, v in med.items() if k != "fp32"}})
            print(f"batch {batch}: " + ", ".join(f"{k} {v / 1e3:.2f} ms (x{med['fp32'] / v:.2f})"
                                                  for k, v in med.items()))
        alone = depthwise_alone(args.repeats, args.threads)
    in_program = bool(static.model._compiled) if hasattr(static.model, "_compiled") else None
    print(f"static int8 output SQNR vs fp32: {sqnr:.1f} dB; one C call: {in_program}; "
          f"float ops: {[r.name for r in static.report.layers if r.output == 'float']}")
    path = write_results("static_depthwise", {"machine": machine_info(), "threads": args.threads, "load": args.load,
                                              "sqnr_db": sqnr if math.isfinite(sqnr) else None, "rows": rows,
                                              "depthwise_alone": alone})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
