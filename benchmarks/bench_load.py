"""Steady under load: every shape of the speed targets, each quantized
layer against fp32 (F.linear / F.conv2d) interleaved in one process (a fresh
random order each round, common.interleaved(order="shuffle")), with
optional CPU-bound background processes running beside it.

With other work on the cores, a call that waits for a descheduled helper
thread costs a whole scheduler slice (milliseconds), whatever its size; the
thread pool (csrc/parallel.c) is built so the caller takes the work itself.
Run it idle and with ``--background-load 2`` (on a 2-core host) and compare
the ratios: the target is >= 1.0x fp32 for every case in both modes.

Cases: int8 Linear batch 1 (weight-only and dynamic) and int4 g128 batch 1 on
4096x4096, 11008x4096, 4096x11008; int8 dynamic batch 32 and 128 on
4096x4096; int8 Conv2d on the ResNet-18 3x3 shapes at batch 1 and 8; the
BERT-base layers (768x768, 3072x768, 768x3072; out x in) at batch 1, and at
16 rows (a short sequence) weight-only and fp16: calls that split over the
threads from a million multiply-adds (AMX-BF16 on CPUs that have it).

Usage: python benchmarks/bench_load.py [--background-load N] [--repeats N] [--quick]
                                       [--isa avx2 ...] [--torch-isa avx2] (see isa_cap.py)
"""
from __future__ import annotations

import argparse
import warnings

import isa_cap  # noqa: F401  (before torch: --isa / --torch-isa set the environment)
import torch
from torch import nn

import mono_quant as mq
from common import background_load, interleaved, machine_info, summary, write_results
from mono_quant import kernels

warnings.filterwarnings("ignore")

LLM_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # out x in
BERT_SHAPES = [(768, 768), (3072, 768), (768, 3072)]
CONV_SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]  # channels, spatial; 3x3, stride 1, padding 1
SHORT_ROWS = 16  # rows of the BERT layers' short-sequence cases (weight-only and fp16)


class Rotation:
    """Copy i, i+1, ... of a layer on each call, so big weights stream from DRAM."""

    def __init__(self, items):
        self.items, self.i = items, 0

    def __call__(self, x):
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i](x)


def copies_for(n: int, k: int) -> int:
    """Enough int8 copies to overflow a 32 MiB L3 for the big layers; BERT layers stay cached, as in a model."""
    return 1 if n * k < (4 << 20) else max(2, -(-(48 << 20) // (n * k)))


def linear_cases(quick: bool):
    """(label, fp32 module, {name: quantized module}, input) for every Linear case."""
    shapes = LLM_SHAPES[:1] if quick else LLM_SHAPES
    for n, k in shapes + BERT_SHAPES:
        copies = copies_for(n, k)
        floats = [nn.Linear(k, n, bias=False).eval() for _ in range(copies)]
        wo = Rotation([mq.quantize(f, activations=None).model for f in floats])
        dyn = Rotation([mq.quantize(f, activations="dynamic").model for f in floats])
        int4 = Rotation([mq.quantize(nn.Sequential(f), dtype="int4").model[0] for f in floats])
        fp32 = Rotation(floats)
        yield f"linear {n}x{k} b1", fp32, {"int8 weight-only": wo, "int8 dynamic": dyn, "int4 g128": int4}, \
            torch.randn(1, k)
        if (n, k) == (4096, 4096):
            for m in (32, 128):
                yield f"linear {n}x{k} b{m}", fp32, {"int8 dynamic": dyn}, torch.randn(m, k)
        if (n, k) in BERT_SHAPES:  # a short sequence: the row kernels (AMX-BF16 where the CPU has it) split
            fp16 = Rotation([mq.quantize(f, dtype="fp16").model for f in floats])
            yield f"linear {n}x{k} b{SHORT_ROWS}", fp32, {"int8 weight-only": wo, "fp16": fp16}, torch.randn(SHORT_ROWS, k)
            del fp16
        del floats, wo, dyn, int4, fp32


def conv_cases(quick: bool):
    for c, hw in CONV_SHAPES[:1] if quick else CONV_SHAPES:
        conv = nn.Conv2d(c, c, 3, padding=1).eval()
        dyn = mq.quantize(conv).model
        for batch in (1, 8):
            yield f"conv {c}ch 3x3 {hw}x{hw} b{batch}", conv, {"int8 dynamic": dyn}, torch.randn(batch, c, hw, hw)


def run(args) -> list:
    rows = []
    for label, fp32, quantized, x in list_cases(args.quick):
        contenders = {"fp32": lambda f=fp32, x=x: f(x)}
        contenders.update({name: (lambda q=q, x=x: q(x)) for name, q in quantized.items()})
        with torch.no_grad():
            times = interleaved(contenders, repeats=args.repeats, warmup=2, order="shuffle")
        stats = {name: summary(t) for name, t in times.items()}
        base = stats["fp32"]["median_us"]
        ratios = {name: base / st["median_us"] for name, st in stats.items() if name != "fp32"}
        rows.append({"case": label, "stats": stats, "ratios_vs_fp32": ratios})
        parts = "  ".join(f"{name} {stats[name]['median_us']:8.1f} us x{r:5.2f}" for name, r in ratios.items())
        print(f"{label:<28} fp32 {base:8.1f} us  {parts}", flush=True)
    return rows


def list_cases(quick: bool):
    yield from linear_cases(quick)
    yield from conv_cases(quick)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--background-load", type=int, default=0, metavar="N",
                        help="run N CPU-bound processes beside the benchmark (default 0)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="4096x4096, the BERT layers and one conv only")
    parser.add_argument("--tag", default="", help="suffix for the JSON file name")
    isa_cap.add_isa_arguments(parser)
    args = parser.parse_args()
    isa_cap.apply_isa()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    info["linear_kernels"] = kernels.linear_kernels()
    info["background_load"] = args.background_load
    info["isa"] = isa_cap.isa_description()
    print(f"{info['cpu']}, {info['cores']} cores, torch threads {info['torch_threads']}, torch {info['torch']}, "
          f"ISA {info['dispatched_isa']}, threads backend {info['linear_kernels'].get('threads')}, "
          f"background load {args.background_load} processes")
    with background_load(args.background_load):
        rows = run(args)
    name = f"bench_load_bg{args.background_load}" + (f"_{args.tag}" if args.tag else "")
    print(f"\nwrote {write_results(name, {'machine': info, 'cases': rows})}")


if __name__ == "__main__":
    main()
