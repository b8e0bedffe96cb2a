"""fp16 / bf16 Conv2d speed: the QuantizedConv2d route (formats/half_conv.py's rule), each C
kernel forced (csrc/h16_conv.c, "gemm": im2col rows times the 16-bit weight widened in
registers; csrc/h16_dconv.c, "direct": no im2col, output channels in vector lanes; for 3x3
stride-1 convs csrc/h16_winograd.c, "winograd": F(2x2, 3x3) on the direct kernel) and torch's
route forced (F.conv2d on the weight widened to float32, a small one kept),
against fp32 nn.Conv2d (oneDNN), interleaved in one process.  Shapes: the ResNet-18 3x3
convs (and its stride-2 and 1x1 shortcut convs) at batch 1 and 8, and small-CNN convs
(16-64 channels on 8x8 to 32x32) at batch 1 and 64.  Figures are time ratios against fp32
(lower is faster); the rule should pick the faster of the two routes, and neither should
be slower than fp32.

Usage: python benchmarks/bench_fp16_conv.py [--repeats N] [--threads T] [--isa avx2] [--clock cpu]
                                           [--quick | --crossover | --crossover-batch 8]
"""
from __future__ import annotations

import argparse
import warnings

import isa_cap  # noqa: F401  (before torch: --isa / --torch-isa set the environment)
import torch
from torch import nn

import mono_quant as mq
from bench_linear import interleaved  # rotating start: no contender always follows fp32
from common import machine_info, summary, write_results
from mono_quant.formats.base import WeightFormat
from mono_quant.formats.half_conv import takes_half_conv
from mono_quant.kernels.half_conv import conv_algorithm, half_conv2d_arrays, half_conv2d_raw
from mono_quant.kernels import SETTINGS

warnings.filterwarnings("ignore")

RESNET = [  # (in, out, kernel, stride, padding, spatial), batches
    ((64, 64, 3, 1, 1, 56), (1, 8)),
    ((128, 128, 3, 1, 1, 28), (1, 8)),
    ((256, 256, 3, 1, 1, 14), (1, 8)),
    ((512, 512, 3, 1, 1, 7), (1, 8)),
    ((128, 256, 3, 2, 1, 28), (1, 8)),
    ((256, 512, 3, 2, 1, 14), (1, 8)),
    ((256, 512, 1, 2, 0, 14), (1, 8)),
]
SMALL_CNN = [
    ((16, 16, 3, 1, 1, 8), (1, 64)),
    ((16, 32, 3, 1, 1, 8), (1, 64)),
    ((32, 32, 3, 1, 1, 16), (1, 64)),
    ((64, 64, 3, 1, 1, 8), (1, 64)),
    ((32, 64, 3, 1, 1, 32), (1,)),
]
QUICK = [RESNET[2], RESNET[3], SMALL_CNN[0], SMALL_CNN[3]]
# --crossover: 3x3 stride-1 convs of C channels on square images, batch 1, rows 16 to 4096
CROSSOVER = [((c, c, 3, 1, 1, hw), (1,)) for c in (16, 32, 64, 128, 256, 512) for hw in (4, 7, 10, 14, 20, 28, 40, 64)
             if c * c * hw * hw <= 512 * 512 * 14 * 14]
# and small-CNN first convs (k = 27, 144) and a ResNet stem, with 1x1 convs (k = in channels)
CROSSOVER_EXTRA = [((3, 16, 3, 1, 1, 32), (1,)), ((3, 32, 3, 1, 1, 32), (1,)), ((16, 32, 3, 2, 1, 32), (1,)),
                   ((3, 64, 7, 2, 3, 112), (1,)), ((64, 128, 1, 1, 0, 28), (1,)), ((256, 512, 1, 1, 0, 7), (1,)),
                   ((512, 512, 1, 1, 0, 14), (1,)), ((32, 64, 5, 1, 2, 16), (1,))]


def forced(module, x, algorithm: str):
    """The module's conv through one C algorithm, whatever the rule says."""
    return half_conv2d_raw(x, *half_conv2d_arrays(module._buffers["weight"], module.bias), module.stride2d,
                           module.padding2d, module.dilation2d, module.groups, algorithm=algorithm)


def route(module, x) -> str:
    """The rule's choice for this input: "gemm", "direct", "winograd" or "torch"."""
    if not takes_half_conv(module, x, SETTINGS.isa):
        return "torch"
    return conv_algorithm(x.shape, module._buffers["weight"].shape, module.stride2d, module.padding2d,
                          module.dilation2d, module.groups)


def run(cases, repeats, batch_override=None):
    rows = []
    for (cin, cout, k, s, p, hw), batches in cases:
        torch.manual_seed(0)
        conv = nn.Conv2d(cin, cout, k, stride=s, padding=p).eval()
        q16 = mq.quantize(nn.Sequential(conv), dtype="fp16").model[0]
        qbf = mq.quantize(nn.Sequential(conv), dtype="bf16").model[0]
        for batch in (batch_override,) if batch_override else batches:
            x = torch.randn(batch, cin, hw, hw)
            contenders = {"fp32": lambda: conv(x), "fp16 (rule)": lambda: q16(x), "bf16 (rule)": lambda: qbf(x),
                          "fp16 torch": lambda: WeightFormat.conv2d(q16.format, q16, x)}
            if SETTINGS.isa != "scalar":
                contenders["fp16 gemm"] = lambda: forced(q16, x, "gemm")
                contenders["fp16 direct"] = lambda: forced(q16, x, "direct")
                if (k, s) == (3, 1):
                    contenders["fp16 winograd"] = lambda: forced(q16, x, "winograd")
            with torch.no_grad():
                times = interleaved(contenders, repeats=repeats)
            stats = {name: summary(t) for name, t in times.items()}
            base = stats["fp32"]["median_us"]
            out = (hw + 2 * p - k) // s + 1
            row = {"shape": [cin, cout, k, s, p, hw], "batch": batch, "rows": batch * out * out,
                   "k": cin * k * k, "route": route(q16, x),
                   "stats": stats, "time_vs_fp32": {n: st["median_us"] / base for n, st in stats.items()}}
            rows.append(row)
            ratios = "  ".join(f"{n} {r:5.2f}" for n, r in row["time_vs_fp32"].items() if n != "fp32")
            print(f"{cin:>4}->{cout:<4} {k}x{k} s{s} {hw:>3}x{hw:<3} b{batch:<3} rows {row['rows']:>6} "
                  f"k {row['k']:>5}  fp32 {base:9.1f} us  route {row['route']:<8}  {ratios}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="four shapes only")
    parser.add_argument("--crossover", action="store_true", help="3x3 convs, 16-512 channels, rows 16-4096")
    parser.add_argument("--crossover-batch", type=int, default=None, help="the crossover shapes at this batch")
    isa_cap.add_isa_arguments(parser)
    args = parser.parse_args()
    isa_cap.apply_isa()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    info["isa"] = isa_cap.isa_description()
    print(f"{info['cpu']}, {info['cores']} cores, torch threads {info['torch_threads']}, torch {info['torch']}, "
          f"ISA {info['dispatched_isa']} (time ratios vs fp32: lower is faster)")
    crossover = args.crossover or args.crossover_batch
    rows = run(CROSSOVER + CROSSOVER_EXTRA if crossover else QUICK if args.quick else RESNET + SMALL_CNN,
               args.repeats, args.crossover_batch)
    suffix = ((f"_{args.isa}" if args.isa != "native" else "") + (f"_t{args.threads}" if args.threads else "")
              + ("_crossover" if crossover else "") + (f"_b{args.crossover_batch}" if args.crossover_batch else ""))
    path = write_results("bench_fp16_conv" + suffix, {"machine": info, "conv": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
