"""int4 layers of widths that are not whole 128-column chunks, and squeeze-excitation / strided 1x1 convs.

Linear: for in_features 208, 440, 96, 1100 (RegNet's and CNNs' widths: the int4 weight's padded row is
not whole 128-column chunks), times fp32 `nn.Linear`, the int4 layer (int8 activations from 2 rows, on a
per-call copy of the weight in whole chunks) and the same weight with fp32 activations
(``activations=None``: what such layers ran before), at 1-64 rows.  Conv: RegNet-Y 400MF's squeeze-excitation 1x1 convs on 1x1 images and its
strided 1x1 projection, fp32 against int8 weight-only and int4.  Interleaved, fp32's time over each
(above 1: faster than fp32).  ``--load N`` runs N busy processes beside it.

    python benchmarks/bench_odd_widths.py [--threads 1] [--load 0] [--repeats 15]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import background_load, interleaved, machine_info, write_results  # noqa: E402

import mono_quant as mq  # noqa: E402

LINEARS = ((440, 440), (208, 440), (96, 2048), (1100, 512))
ROWS = (1, 2, 4, 16, 64)
# (in, out, image side, stride): RegNet-Y 400MF's SE convs (1x1 images) and its 1x1 projection
CONVS = ((26, 208, 1, 1), (440, 110, 1, 1), (110, 440, 1, 1), (208, 440, 8, 2))


def _ratios(contenders: dict, repeats: int) -> dict:
    times = interleaved(contenders, repeats=repeats)
    fp32 = statistics.median(times["fp32"])
    return {name: fp32 / statistics.median(t) for name, t in times.items() if name != "fp32"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--load", type=int, default=0, help="busy processes beside the benchmark")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {"linear": [], "conv": []}
    with background_load(args.load) if args.load else contextlib.nullcontext(), torch.inference_mode():
        for k, n in LINEARS:
            lin = torch.nn.Linear(k, n).eval()
            q = mq.quantize(torch.nn.Sequential(lin), "int4").model[0]
            q_fp32_act = mq.quantize(torch.nn.Sequential(lin), "int4", activations=None).model[0]  # (same weight)
            for rows in ROWS:
                x = torch.randn(rows, k)
                r = _ratios({"fp32": lambda: lin(x), "int4": lambda: q(x),
                             "int4 fp32 act": lambda: q_fp32_act(x)}, args.repeats)
                results["linear"].append({"in": k, "out": n, "rows": rows, **r})
                print(f"Linear {k:5d} -> {n:5d} rows {rows:3d}: " + "  ".join(f"{a} {v:.2f}x" for a, v in r.items()),
                      flush=True)
        for cin, cout, side, stride in CONVS:
            conv = torch.nn.Conv2d(cin, cout, 1, stride=stride).eval()
            wo = mq.quantize(torch.nn.Sequential(conv), "int8", activations=None).model[0]
            q4 = mq.quantize(torch.nn.Sequential(conv), "int4").model[0]
            x = torch.randn(1, cin, side, side)
            r = _ratios({"fp32": lambda: conv(x), "int8 weight-only": lambda: wo(x), "int4": lambda: q4(x)},
                        args.repeats)
            results["conv"].append({"in": cin, "out": cout, "side": side, "stride": stride, **r})
            print(f"Conv2d 1x1 {cin:4d} -> {cout:4d} on {side}x{side} stride {stride}: "
                  + "  ".join(f"{a} {v:.2f}x" for a, v in r.items()), flush=True)
    path = write_results("odd_widths", {"machine": machine_info(), "threads": args.threads, "load": args.load,
                                        "results": results})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
