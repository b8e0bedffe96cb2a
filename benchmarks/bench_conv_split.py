"""The AVX2 direct conv kernels that replace the sign trick (no VNNI): the unsigned-codes kernel
(x86/avx2/static_conv_ux.c) on images without a negative value, the split kernel (csrc/conv_split.c,
x86/avx2/dconv_split.c) on images of both signs.

Where the CPU has AVX2 without VNNI, a dynamic int8 Conv2d on the direct route runs the unsigned
kernel on an image whose codes are all >= 0 (post-ReLU inputs) and the split kernel on the other
images its rules take (a panel of outputs or more; few enough cuts).  For ResNet-18's 3x3 convs
and a small CNN's layers, on post-ReLU inputs (``relu``) and on inputs of both signs (``signed``,
a batch norm's output: Gaussian), in one process: fp32 eager, ours by the rules (``ours``) and
with both off (``sign``, ``_C.set_split_rows(0)``), switched per call, rounds interleaved.  Prints
fp32's time / ours for both, our speed against the sign trick (median of per-round ratios), which
kernel ran and, from the conv's profile, the per-image cost of the steps before the kernel
(quantize + split) beyond the sign trick's and the kernel's time.  1 thread is timed in CPU time.

    python benchmarks/bench_conv_split.py [--threads 1] [--rounds 31] [--batches 1,8] [--inputs relu,signed]
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


def measure(args, clock, inputs: str, batch: int, channels: int, side: int) -> dict:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1).eval()
    quantized = mq.quantize(torch.nn.Sequential(conv), dtype="int8").model
    x = torch.randn(batch, channels, side, side)
    x = torch.relu(x) if inputs == "relu" else x
    times = {"fp32": [], "sign": [], "ours": []}
    steps = {"sign": [], "ours": []}
    counts = {name: _C.linear_kernels()[name] for name in ("unsigned_conv_images", "split_conv_images")}
    with torch.inference_mode():
        for _ in range(args.rounds):
            start = clock()
            conv(x)
            times["fp32"].append(clock() - start)
            for name, mode in (("sign", 0), ("ours", 1)):
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
    ran = {name: _C.linear_kernels()[name] - before for name, before in counts.items()}
    kernel = "unsigned" if ran["unsigned_conv_images"] else "split" if ran["split_conv_images"] else "sign trick"
    med = {name: median(values) for name, values in times.items()}
    ratio = median([s / t for s, t in zip(times["sign"], times["ours"])])
    cost = median([a[0] for a in steps["ours"]]) - median([a[0] for a in steps["sign"]])
    kernel_us = (median([a[1] for a in steps["sign"]]), median([a[1] for a in steps["ours"]]))
    row = dict(inputs=inputs, channels=channels, side=side, batch=batch, kernel=kernel, fp32_us=med["fp32"] * 1e6,
               vs_fp32_sign=med["fp32"] / med["sign"], vs_fp32_ours=med["fp32"] / med["ours"], ours_vs_sign=ratio,
               own_steps_us=cost, kernel_us=kernel_us)
    print(f"{inputs:6s} {channels:4d}ch {side:3d}x{side:<3d} batch {batch}: fp32 {med['fp32'] * 1e6:8.0f} us; "
          f"x{row['vs_fp32_sign']:.2f} fp32 -> x{row['vs_fp32_ours']:.2f}, {kernel} x{ratio:.2f} the sign trick "
          f"(kernel {kernel_us[0]:.0f} -> {kernel_us[1]:.0f} us, own steps {cost:+.0f} us)", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--inputs", default="relu,signed")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    kernels = _C.linear_kernels()
    print(f"{machine_info()['cpu']}, threads {args.threads}, conv kernels {kernels['dynamic_conv_unsigned']} / "
          f"{kernels['dynamic_conv_split']} ({'CPU time' if args.threads == 1 else 'wall clock'})")
    rows = []
    for inputs in args.inputs.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for channels, side in SHAPES:
                rows.append(measure(args, clock, inputs, batch, channels, side))
    print("wrote", write_results(f"conv_split_t{args.threads}", {"machine": machine_info(), "rows": rows}))


if __name__ == "__main__":
    main()
