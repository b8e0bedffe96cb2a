"""The AVX2 split kernel of the dynamic direct conv (csrc/conv_split.c, x86/avx2/dconv_split.c)
against the sign trick it replaces and fp32.

Where the CPU has AVX2 without VNNI, a dynamic int8 Conv2d on the direct route runs the split
kernel on the images its rules take (a panel of outputs or more; few enough cuts).  For ResNet-18's
3x3 convs and a small CNN's layers on post-ReLU inputs, in one process: fp32 eager, ours by the
rules (``split``) and with the split off (``sign``, ``_C.set_split_rows(0)``), switched per call,
rounds interleaved.  Prints fp32's time / ours for both, the split's speed against the sign trick
(median of per-round ratios) and, from the conv's profile, the per-image split's cost (the steps
before the kernel: quantize + split) and the kernel's time.  1 thread is timed in CPU time.

    python benchmarks/bench_conv_split.py [--threads 1] [--rounds 31] [--batches 1,8]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, write_results  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant import _C  # noqa: E402

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7), (32, 32), (64, 16)]  # channels, image side (3x3, pad 1)


def median(values):
    return sorted(values)[len(values) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    kernels = _C.linear_kernels()
    print(f"{machine_info()['cpu']}, threads {args.threads}, conv split kernel {kernels['dynamic_conv_split']}"
          f" ({'CPU time' if args.threads == 1 else 'wall clock'})")
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for channels, side in SHAPES:
            torch.manual_seed(0)
            conv = torch.nn.Conv2d(channels, channels, 3, padding=1).eval()
            quantized = mq.quantize(torch.nn.Sequential(conv), dtype="int8").model
            x = torch.relu(torch.randn(batch, channels, side, side))
            times = {"fp32": [], "sign": [], "split": []}
            steps = {"sign": [], "split": []}
            with torch.inference_mode():
                for _ in range(args.rounds):
                    start = clock()
                    conv(x)
                    times["fp32"].append(clock() - start)
                    for name, mode in (("sign", 0), ("split", 1)):
                        _C.set_split_rows(mode)
                        quantized(x)
                        _C.conv_profile(True)
                        _C.conv_profile()
                        start = clock()
                        quantized(x)
                        times[name].append(clock() - start)
                        profile = _C.conv_profile(False)
                        steps[name].append((profile["thread_quantize"] / 1e3, profile["thread_conv"] / 1e3))
            _C.set_split_rows(1)
            med = {name: median(values) for name, values in times.items()}
            ratio = median([s / t for s, t in zip(times["sign"], times["split"])])
            cost = median([a[0] for a in steps["split"]]) - median([a[0] for a in steps["sign"]])
            kernel = (median([a[1] for a in steps["sign"]]), median([a[1] for a in steps["split"]]))
            row = dict(channels=channels, side=side, batch=batch, fp32_us=med["fp32"] * 1e6,
                       vs_fp32_sign=med["fp32"] / med["sign"], vs_fp32_split=med["fp32"] / med["split"],
                       split_vs_sign=ratio, split_cost_us=cost, kernel_us=kernel)
            rows.append(row)
            print(f"{channels:4d}ch {side:3d}x{side:<3d} batch {batch}: fp32 {med['fp32'] * 1e6:8.0f} us; x{row['vs_fp32_sign']:.2f}"
                  f" fp32 -> x{row['vs_fp32_split']:.2f}, split x{ratio:.2f} the sign trick (kernel {kernel[0]:.0f} -> "
                  f"{kernel[1]:.0f} us, the split's own steps {cost:+.0f} us)", flush=True)
    print("wrote", write_results(f"conv_split_t{args.threads}", {"machine": machine_info(), "rows": rows}))


if __name__ == "__main__":
    main()
