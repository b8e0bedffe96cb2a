"""A 1-D audio CNN (an M5-style keyword-spotting front end) under static int8, dynamic int8 and fp32.

Six Conv1d + BatchNorm1d + ReLU blocks (1 -> 64 -> 64 -> 128 -> 128 -> 256 -> 256 channels,
kernel 9, three of them strided), global average pool and a Linear head, on raw waveforms of
``--length`` samples (random weights, BatchNorm statistics as a trained net's).  Times the
three interleaved at batch 1 and 8 (ratios within one run), and gives the static model's
output SQNR against fp32.  ``--load N`` runs N busy processes beside it.

    python benchmarks/static/bench_conv1d.py [--threads 1] [--load 0] [--length 4000]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import background_load, interleaved, machine_info, summary, write_results  # noqa: E402

import mono_quant as mq  # noqa: E402


def block(cin: int, cout: int, stride: int = 1) -> list:
    return [nn.Conv1d(cin, cout, 9, stride, 4), nn.BatchNorm1d(cout), nn.ReLU()]


def audio_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(*block(1, 64, 2), *block(64, 64), *block(64, 128, 2), *block(128, 128),
                          *block(128, 256, 2), *block(256, 256), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                          nn.Linear(256, 10))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--load", type=int, default=0, help="busy processes beside the benchmark")
    ap.add_argument("--length", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = audio_cnn()
    torch.manual_seed(1)
    calibration = [torch.randn(16, 1, args.length) for _ in range(8)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        static = mq.quantize(model, "int8", activations="static", calibration=calibration)
    dynamic = mq.quantize(model, "int8").model
    probe = torch.randn(8, 1, args.length)
    with torch.no_grad():
        ref, got = model(probe), static.model(probe)
    sqnr = float(10 * torch.log10(ref.pow(2).mean() / (got - ref).pow(2).mean()))
    rows = []
    with background_load(args.load) if args.load else contextlib.nullcontext(), torch.no_grad():
        for batch in (1, 8):
            x = torch.randn(batch, 1, args.length)
            times = interleaved({"fp32": lambda: model(x), "static int8": lambda: static.model(x),
                                 "dynamic int8": lambda: dynamic(x)}, repeats=args.repeats)
            med = {k: summary(v)["median_us"] for k, v in times.items()}
            rows.append({"batch": batch, **{f"{k}_us": v for k, v in med.items()},
                         **{f"{k}_x_fp32": med["fp32"] / v for k, v in med.items() if k != "fp32"}})
            print(f"batch {batch}: " + ", ".join(f"{k} {v / 1e3:.2f} ms (x{med['fp32'] / v:.2f})"
                                                  for k, v in med.items()))
    print(f"static int8 output SQNR vs fp32: {sqnr:.1f} dB; fused: "
          + ", ".join(f"{r.name}:{r.kind}/{r.output}" for r in static.report.layers))
    path = write_results("static_conv1d", {"machine": machine_info(), "threads": args.threads, "load": args.load,
                                           "length": args.length, "sqnr_db": sqnr, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
