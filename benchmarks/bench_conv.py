"""INT8 Conv2d speed: mono-quant's QuantizedConv2d (dynamic int8 and
weight-only) against fp32 F.conv2d (oneDNN), interleaved in one process, on
the ResNet-18 3x3 shapes at batch 1 and 8 (and two 1x1 shapes).

Target (docs/benchmarks.md): int8 at least as fast as fp32 (>= 1.0x).

Usage: python benchmarks/bench_conv.py [--repeats N] [--threads T] [--background-load N]
       [--isa ...] [--torch-isa avx2] (isa_cap.py)
"""
from __future__ import annotations

import argparse
import warnings

import isa_cap  # noqa: F401  (before torch: --isa / --torch-isa set the environment)
import torch
from torch import nn

import mono_quant as mq
from bench_linear import interleaved  # rotating start: no contender always follows fp32
from common import background_load, machine_info, summary, write_results
from mono_quant import kernels

warnings.filterwarnings("ignore")


SHAPES = [  # (channels in, out, kernel, stride, padding, spatial)
    (64, 64, 3, 1, 1, 56),
    (128, 128, 3, 1, 1, 28),
    (256, 256, 3, 1, 1, 14),
    (512, 512, 3, 1, 1, 7),
    (256, 1024, 1, 1, 0, 14),
    (512, 2048, 1, 1, 0, 7),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--background-load", type=int, default=0, metavar="N",
                        help="run N CPU-bound processes beside the benchmark (common.background_load)")
    isa_cap.add_isa_arguments(parser)
    args = parser.parse_args()
    isa_cap.apply_isa()
    isa_cap.check_clock(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    info["isa"] = isa_cap.isa_description()
    info["linear_kernels"] = kernels.linear_kernels()
    print(f"{info['cpu']}, {info['cores']} cores, torch threads {info['torch_threads']}, torch {info['torch']}, "
          f"ISA {info['dispatched_isa']}, kernels {info['linear_kernels']}")
    info["background_load"] = args.background_load
    with background_load(args.background_load):
        rows = run(args.repeats)
    suffix = ((f"_{args.isa}" if args.isa != "native" else "") + (f"_t{args.threads}" if args.threads else "")
              + (f"_bg{args.background_load}" if args.background_load else ""))
    path = write_results("bench_conv" + suffix, {"machine": info, "conv": rows})
    print(f"\nwrote {path}")


def run(repeats):
    rows = []
    for cin, cout, k, s, p, hw in SHAPES:
        torch.manual_seed(0)
        conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=True).eval()
        dyn = mq.quantize(conv).model
        wo = mq.quantize(conv, activations=None).model
        for batch in (1, 8):
            x = torch.randn(batch, cin, hw, hw)
            with torch.no_grad():
                times = interleaved({"fp32 F.conv2d": lambda: conv(x), "mq dynamic int8": lambda: dyn(x),
                                     "mq weight-only": lambda: wo(x)}, repeats=repeats)
            stats = {name: summary(t) for name, t in times.items()}
            base = stats["fp32 F.conv2d"]["median_us"]
            macs = batch * cout * cin * k * k * (hw // s) ** 2
            row = {"shape": [cin, cout, k, s, p, hw], "batch": batch, "stats": stats,
                   "ratios_vs_fp32": {n: base / st["median_us"] for n, st in stats.items()},
                   "GOPs": {n: 2 * macs / (st["median_us"] * 1e-6) / 1e9 for n, st in stats.items()}}
            rows.append(row)
            print(f"\n{cin}->{cout} {k}x{k} at {hw}x{hw}, batch {batch}")
            for name, st in stats.items():
                print(f"  {name:<18} {st['median_us']:9.1f} us [{st['p10_us']:8.1f} - {st['p90_us']:8.1f}]"
                      f"  {row['GOPs'][name]:7.1f} GOP/s  x{base / st['median_us']:5.2f} vs fp32")
    return rows


if __name__ == "__main__":
    main()
