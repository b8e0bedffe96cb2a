"""fp16 / bf16 weight Linear benchmark: the C kernel that widens the 16-bit weight in
registers (``kernels.fp16.half_linear``) against fp32 ``F.linear`` and against the previous
fp16 path (``F.linear(x, w.float())``: the whole weight converted per call).

Run: .venv/bin/python benchmarks/bench_fp16.py [--threads 1] [--rows 1,8,32,128]
     [--shapes 768x768,3072x768,4096x4096,11008x4096] [--repeats 9] [--bf16]
     [--isa avx2] [--torch-isa avx2] [--clock cpu]            (isa_cap.py)
     --crossover: the BERT layer shapes at rows 1..4096 (the row rule in formats/cast.py)
     --models bert384-128,bert768-1024,...: whole models of bench_models.py instead
     (fp32 eager, fp16 on the kernel, fp16 on the previous path), --budget S of rounds each
Prints a table (time / fp32, lower is faster) and writes benchmarks/results/bench_fp16.json.
Contenders are timed in rotation after a warm-up; medians with p10/p90.  A shape whose
fp16 weight is under 64 MiB rotates over copies at batch 1, so it is read from DRAM.
"""
from __future__ import annotations

import argparse
import math

import isa_cap  # noqa: F401  (before torch: --isa / --torch-isa set the environment)
import torch
import torch.nn.functional as F

import mono_quant as mq
from mono_quant.formats import cast
from mono_quant.kernels import SETTINGS
from mono_quant.kernels.fp16 import half_linear

from common import interleaved, machine_info, summary, write_results

CROSSOVER_SHAPES = "384x384,1536x384,384x1536,768x768,3072x768,768x3072"
CROSSOVER_ROWS = "1,16,64,128,256,512,1024,2048,4096"
DRAM_BYTES = 64 << 20


def parse_shapes(text: str):
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",") if s]


def run(args) -> dict:
    torch.manual_seed(0)
    half = torch.bfloat16 if args.bf16 else torch.float16
    rows_list = [int(v) for v in args.rows.split(",")]
    cases = []
    for out_f, in_f in parse_shapes(args.shapes):
        copies = 1
        if not args.crossover:
            copies = max(1, min(4, math.ceil(DRAM_BYTES / (out_f * in_f * 2))))
        w32 = [torch.randn(out_f, in_f) / math.sqrt(in_f) for _ in range(copies)]
        w16 = [w.to(half) for w in w32]
        bias = torch.randn(out_f)
        for m in rows_list:
            x = torch.randn(m, in_f)
            turn = {"fp32": 0, "old": 0, "new": 0}

            def rotating(name, fn, weights):
                def call():
                    turn[name] = (turn[name] + 1) % len(weights) if m == 1 else 0
                    return fn(weights[turn[name]])
                return call

            contenders = {
                "fp32": rotating("fp32", lambda w: F.linear(x, w, bias), w32),
                "old fp16": rotating("old", lambda w: F.linear(x, w.float(), bias), w16),
                "kernel": rotating("new", lambda w: half_linear(x, w, bias), w16),
            }
            macs = m * in_f * out_f
            repeats = args.repeats if macs < (1 << 31) else max(3, args.repeats // 3)
            times = interleaved(contenders, repeats=repeats, clock=isa_cap.clock)
            stats = {name: summary(t) for name, t in times.items()}
            base = stats["fp32"]["median_us"]
            row = {"shape": f"{out_f}x{in_f}", "rows": m, "fp32_us": base,
                   "old_fp16_ratio": stats["old fp16"]["median_us"] / base,
                   "kernel_ratio": stats["kernel"]["median_us"] / base,
                   "kernel_vs_old": stats["kernel"]["median_us"] / stats["old fp16"]["median_us"],
                   "kernel_GBps": out_f * in_f * 2 / stats["kernel"]["median_us"] / 1e3, "stats": stats}
            cases.append(row)
            print(f"{row['shape']:>11} {m:>5} {base / 1e3:>10.3f} {row['old_fp16_ratio']:>9.2f} "
                  f"{row['kernel_ratio']:>9.2f} {row['kernel_vs_old']:>9.2f} {row['kernel_GBps']:>8.1f}", flush=True)
    return {"cases": cases}


def run_models(args) -> dict:
    """Whole models: fp32 eager against fp16 on the kernel and fp16 on the previous path
    (torch's op on the converted weight: ``cast.KERNEL_MAX_ROWS`` set to 0 for the call)."""
    from bench_models import build_case

    cases = []
    for name in args.models.split(","):
        model, x = build_case(name)
        half = mq.quantize(model, dtype="bf16" if args.bf16 else "fp16").model.eval()
        isa = SETTINGS.isa

        def previous_path():
            saved = cast.KERNEL_MAX_ROWS[isa]
            cast.KERNEL_MAX_ROWS[isa] = 0
            try:
                return half(x)
            finally:
                cast.KERNEL_MAX_ROWS[isa] = saved

        contenders = {"fp32": lambda: model(x), "old fp16": previous_path, "kernel": lambda: half(x)}
        with torch.no_grad():
            t0 = isa_cap.clock()
            for fn in contenders.values():
                fn()
            rounds = int(min(max(args.budget / max(isa_cap.clock() - t0, 1e-6), 5), 200))
            times = interleaved(contenders, repeats=rounds, clock=isa_cap.clock)
            cos = float(torch.nn.functional.cosine_similarity(half(x).reshape(1, -1).double(),
                                                              model(x).reshape(1, -1).double()))
        stats = {k: summary(v) for k, v in times.items()}
        base = stats["fp32"]["median_us"]
        row = {"case": name, "isa": isa, "rounds": rounds, "fp32_ms": base / 1e3,
               "old_fp16_ratio": stats["old fp16"]["median_us"] / base,
               "kernel_ratio": stats["kernel"]["median_us"] / base, "cosine_vs_fp32": cos, "stats": stats}
        cases.append(row)
        print(f"{name:>13} {isa:>6} {rounds:>6} {base / 1e3:>10.2f} {row['old_fp16_ratio']:>9.2f} "
              f"{row['kernel_ratio']:>9.2f} {cos:>9.6f}", flush=True)
    return {"models": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", default="1,8,32,128")
    parser.add_argument("--shapes", default="768x768,3072x768,4096x4096,11008x4096")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--bf16", action="store_true", help="bf16 weights instead of fp16")
    parser.add_argument("--crossover", action="store_true", help=f"shapes {CROSSOVER_SHAPES}, rows {CROSSOVER_ROWS}")
    parser.add_argument("--models", default=None, help="whole models of bench_models.py (bert384-128, ...)")
    parser.add_argument("--budget", type=float, default=6.0, help="--models: seconds of timed rounds per case")
    isa_cap.add_isa_arguments(parser)
    args = parser.parse_args()
    if args.crossover:
        args.shapes, args.rows = CROSSOVER_SHAPES, CROSSOVER_ROWS
    torch.set_num_threads(args.threads)
    isa_cap.apply_isa()
    isa_cap.check_clock(args.threads)
    payload = {"machine": machine_info(), "isa": isa_cap.isa_description(), "weight": "bf16" if args.bf16 else "fp16",
               "threads": args.threads}
    if args.models:
        print(f"{'case':>13} {'isa':>6} {'rounds':>6} {'fp32 ms':>10} {'old/fp32':>9} {'kern/fp32':>9} {'cosine':>9}"
              "   (time ratios: lower is faster)")
        payload.update(run_models(args))
        name = "bench_fp16_models"
    else:
        print(f"{'out x in':>11} {'rows':>5} {'fp32 ms':>10} {'old/fp32':>9} {'kern/fp32':>9} {'kern/old':>9} "
              f"{'GB/s':>8}   (time ratios: lower is faster)")
        payload.update(run(args))
        name = "bench_fp16"
    print("wrote", write_results(name + ("_bf16" if args.bf16 else "") + ("_" + isa_cap.ISA if isa_cap.ISA != "native"
                                                                              else ""), payload))


if __name__ == "__main__":
    main()
