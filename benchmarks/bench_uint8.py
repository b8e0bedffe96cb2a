"""uint8 weight-only Linear benchmark: the uint8 layer (``kernels/uint8.py``: the C kernel on the
stored uint8 weight, its panels or the dequantized weight, by ``row_rules.uint8_path``) against
fp32 ``nn.Linear``, the previous uint8 path (the layer's weight dequantized per call, then
``F.linear``) and int8 weight-only (the packed kernels).

Run: .venv/bin/python benchmarks/bench_uint8.py [--threads 1] [--rows 1,2,4,8,16,32,64,128]
     [--shapes 768x768,3072x768,768x3072,4096x4096] [--repeats 15] [--clock cpu]
     [--background-load 2 --threads 2]   (two busy processes beside it: the "steady under load" mode)
Prints fp32's time / each contender's (above 1: faster than fp32) and writes
benchmarks/results/bench_uint8.json.  Contenders are timed in rotation after a warm-up; medians.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn

import mono_quant as mq
from mono_quant.kernels import SETTINGS, row_rules

from common import background_load, interleaved, machine_info, summary, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--shapes", default="768x768,3072x768,768x3072,4096x4096")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--background-load", type=int, default=0, metavar="N",
                        help="run N CPU-bound processes beside the benchmark (common.background_load); "
                             "ratios then compare means")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" and args.threads == 1 and not args.background_load \
        else time.perf_counter
    rows_list = [int(r) for r in args.rows.split(",")]
    results = []
    print(f"threads {args.threads}, level {SETTINGS.isa}, kernel to {row_rules.U8_KERNEL_MAX_ROWS[SETTINGS.isa]} rows, "
          f"panels to {row_rules.U8_PANEL_MAX_ROWS[SETTINGS.isa]}; "
          f"fp32's time / ours (above 1: faster)")
    print(f"{'shape (out x in)':>18} {'rows':>5} {'fp32 us':>9} {'uint8':>7} {'uint8 before':>13} {'int8 w-only':>12}")
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        torch.manual_seed(0)
        fp32 = nn.Sequential(nn.Linear(k, n)).eval()
        u8 = mq.quantize(fp32, dtype="uint8", activations=None).model
        i8 = mq.quantize(fp32, dtype="int8", activations=None).model
        for rows in rows_list:
            x = torch.randn(rows, k)

            def before(layer=u8[0]):  # the previous route: the whole weight dequantized per call
                return nn.functional.linear(x, layer.dequantized_weight(torch.float32), layer.bias)

            with torch.no_grad(), background_load(args.background_load):
                times = interleaved({"fp32": lambda: fp32(x), "uint8": lambda: u8(x), "before": before,
                                     "int8": lambda: i8(x)}, repeats=args.repeats, clock=clock)
            stat = "mean_us" if args.background_load else "median_us"
            med = {name: summary(t)[stat] for name, t in times.items()}
            ratio = {name: med["fp32"] / med[name] for name in med}
            results.append({"shape": [n, k], "rows": rows, "median_us": med, "fp32_over": ratio})
            print(f"{shape:>18} {rows:>5} {med['fp32']:>9.1f} {ratio['uint8']:>7.2f} {ratio['before']:>13.2f} "
                  f"{ratio['int8']:>12.2f}", flush=True)
    path = write_results("bench_uint8", {"machine": machine_info(), "threads": args.threads,
                                         "background_load": args.background_load, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
