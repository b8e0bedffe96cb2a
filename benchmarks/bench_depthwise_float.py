"""Depthwise convs of quantized layers: the C depthwise kernel against fp32 `nn.Conv2d`.

A quantized depthwise layer (every format) runs `kernels.depthwise` on its kept float32 weight.  For
the depthwise shapes of MobileNetV2 (128 x 128 and 224 x 224 inputs), EfficientNet (5 x 5) and
ConvNeXt (7 x 7), times fp32 `nn.Conv2d` and the int8 layer (its route rule: torch's conv where the
rule declines, marked *), interleaved, at batch 1 and 8; prints fp32's time over the layer's (above 1:
faster than fp32).  ``--load N`` runs N busy processes beside it.

    python benchmarks/bench_depthwise_float.py [--threads 1] [--load 0] [--repeats 15]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import background_load, interleaved, machine_info, summary, write_results  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant.kernels.depthwise import takes_depthwise  # noqa: E402

SHAPES = [  # (channels, input size, kernel, stride)
    (32, 64, 3, 1), (96, 64, 3, 2), (144, 32, 3, 1), (144, 32, 3, 2), (192, 16, 3, 1), (192, 16, 3, 2),
    (384, 8, 3, 1), (576, 8, 3, 1), (576, 8, 3, 2), (960, 4, 3, 1),                   # MobileNetV2 at 128
    (32, 112, 3, 1), (144, 56, 3, 1), (960, 7, 3, 1),                                # ... at 224
    (240, 28, 5, 1), (672, 14, 5, 2),                                                # EfficientNet-B0
    (96, 56, 7, 1), (384, 14, 7, 1), (768, 7, 7, 1),                                 # ConvNeXt-T
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--load", type=int, default=0, help="busy processes beside the benchmark")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with background_load(args.load) if args.load else contextlib.nullcontext(), torch.no_grad():
        for batch in args.batches:
            for channels, size, k, stride in SHAPES:
                conv = torch.nn.Conv2d(channels, channels, k, stride, k // 2, groups=channels).eval()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    q = mq.quantize(conv, "int8").model
                x = torch.randn(batch, channels, size, size)
                takes = takes_depthwise(x, channels, channels, channels, (k, k), (stride, stride), (k // 2, k // 2),
                                        (1, 1), "zeros")
                times = interleaved({"fp32": lambda: conv(x), "int8": lambda: q(x)}, repeats=args.repeats)
                med = {key: summary(t)["median_us"] for key, t in times.items()}
                rows.append({"batch": batch, "channels": channels, "size": size, "kernel": k, "stride": stride,
                             "kernel_taken": bool(takes), **{f"{key}_us": v for key, v in med.items()}})
                print(f"b{batch} {channels:4d} ch {size:3d}x{size:<3d} k{k} s{stride}: fp32 {med['fp32']:8.1f} us  "
                      f"int8 {med['int8']:8.1f} us  x{med['fp32'] / med['int8']:5.2f}" + ("" if takes else " *"),
                      flush=True)
    print("x: fp32's time over the quantized layer's (* the rule keeps torch's conv on the dequantized weight)")
    path = write_results("depthwise_float", {"machine": machine_info(), "threads": args.threads, "load": args.load,
                                             "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
