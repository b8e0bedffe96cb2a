"""Static int8's direct conv on AVX2 without VNNI: the unsigned-codes kernel against the sign trick.

A work item whose codes x - x_zp keep each pair of channels within 255 (a ReLU output's codes at
zero-point -127, below half of the calibrated range) runs them as vpmaddubsw's unsigned side
(x86/avx2/static_conv_ux.c): three vector operations per 32 multiply-adds against the sign
trick's four.  On the Fashion-MNIST ResNet8 (tests/data), calibrated with each observer on 512
training images, at batch 1 and 64: how many work items took it, and the model's speed with it
against the sign trick (``_C.set_split_rows(0)``), switched per call, interleaved; the same bits
either way (checked).  1 thread is timed in CPU time.

    python benchmarks/static/bench_static_unsigned.py [--threads 1] [--rounds 21] [--observers minmax,percentile]

Needs Debian's dataset-fashion-mnist.  Writes benchmarks/results/static_unsigned_t<threads>.json.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from bench_static import load_model  # noqa: E402
from common import machine_info, write_results  # noqa: E402
from resnet8 import normalize_images  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant import _C  # noqa: E402
from mono_quant.datasets import load_fashion_mnist  # noqa: E402


def median(values):
    return sorted(values)[len(values) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--observers", default="minmax,percentile,entropy")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    print(f"{machine_info()['cpu']}, threads {args.threads}, static conv kernel "
          f"{_C.linear_kernels()['dynamic_conv_unsigned']} ({'CPU time' if args.threads == 1 else 'wall clock'})")
    model = load_model()
    train_x, _ = load_fashion_mnist("train", limit=512)
    test_x, _ = load_fashion_mnist("test", limit=64)
    train_x, test_x = normalize_images(train_x), normalize_images(test_x)
    rows = []
    for observer in args.observers.split(","):
        static = mq.quantize(model, "int8", activations="static", calibration=train_x, observer=observer).model
        for batch in (1, 64):
            x = test_x[:batch]
            outputs, items = {}, {}
            for mode in (0, 1):
                _C.set_split_rows(mode)
                before = _C.linear_kernels()["unsigned_conv_images"]
                with torch.inference_mode():
                    outputs[mode] = static(x)
                items[mode] = _C.linear_kernels()["unsigned_conv_images"] - before
            assert torch.equal(outputs[0], outputs[1]), "the unsigned kernel changed the bits"
            times = {0: [], 1: []}
            with torch.inference_mode():
                for _ in range(args.rounds):
                    for mode in (0, 1):
                        _C.set_split_rows(mode)
                        static(x)
                        start = clock()
                        static(x)
                        times[mode].append(clock() - start)
            _C.set_split_rows(1)
            ratio = median([s / u for s, u in zip(times[0], times[1])])
            row = dict(observer=observer, batch=batch, unsigned_items=items[1], sign_us=median(times[0]) * 1e6,
                       ours_us=median(times[1]) * 1e6, speedup=ratio)
            rows.append(row)
            print(f"{observer:10s} batch {batch:3d}: {items[1]:4d} work items on the unsigned kernel; sign trick "
                  f"{row['sign_us']:8.0f} us, ours {row['ours_us']:8.0f} us: x{ratio:.2f}", flush=True)
    print("wrote", write_results(f"static_unsigned_t{args.threads}", {"machine": machine_info(), "rows": rows}))


if __name__ == "__main__":
    main()
