"""LSTM / GRU / RNN / MultiheadAttention speed: mono-quant's QuantizedLSTM / QuantizedGRU /
QuantizedRNN / QuantizedMultiheadAttention (dynamic int8, int8 weight-only) against the float modules
(torch's fused LSTM / GRU, nn.MultiheadAttention), interleaved in one process, with the
output SQNR against float beside each ratio.  Two float baselines: torch's default
(oneDNN for LSTM / GRU on CPU) and torch with oneDNN disabled (ATen's own RNN loop),
which is much faster for LSTM on some CPUs; ratios are against the faster of the two.

Shapes: LSTM / GRU input 512, hidden 512, sequence 64, batch 1 and 32 (one layer, and
two bidirectional layers); MHA embed 512, 8 heads, sequence 64, batch 1 and 32.

Usage: python benchmarks/bench_rnn.py [--repeats N] [--threads T] [--only SUBSTRING]
"""
from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

import mono_quant as mq
from common import interleaved, machine_info, summary, write_results

warnings.filterwarnings("ignore")


def sqnr(ref, out) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))


def float_without_onednn(module, inputs):
    with torch.backends.mkldnn.flags(enabled=False):
        return module(*inputs)


def cases():
    for batch in (1, 32):
        x = torch.randn(64, batch, 512)
        yield f"LSTM 512x512 L1 seq64 b{batch}", nn.LSTM(512, 512), (x,)
        yield f"LSTM 512x512 L2 bidir seq64 b{batch}", nn.LSTM(512, 512, num_layers=2, bidirectional=True), (x,)
        yield f"GRU 512x512 L1 seq64 b{batch}", nn.GRU(512, 512), (x,)
        yield f"RNN tanh 512x512 L1 seq64 b{batch}", nn.RNN(512, 512), (x,)
        yield f"MHA E512 h8 seq64 b{batch}", nn.MultiheadAttention(512, 8), (x, x, x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    print(f"{'case':34} {'fp32 us':>10} {'no-oneDNN':>10} {'int8 dyn':>9} {'x fp32':>7} {'SQNR':>6} {'int8 w-o':>9} {'x fp32':>7} "
          f"{'SQNR':>6}")
    for name, module, inputs in cases():
        if args.only not in name:
            continue
        module.eval()
        dyn = mq.quantize(module, dtype="int8").model
        wo = mq.quantize(module, dtype="int8", activations=None).model
        with torch.no_grad():
            ref = module(*inputs)[0]
            contenders = {"fp32": lambda: module(*inputs), "fp32 no-oneDNN": lambda: float_without_onednn(module, inputs),
                          "int8 dynamic": lambda: dyn(*inputs), "int8 weight-only": lambda: wo(*inputs)}
            times = interleaved(contenders, repeats=args.repeats)
            quality = {"int8 dynamic": sqnr(ref, dyn(*inputs)[0]), "int8 weight-only": sqnr(ref, wo(*inputs)[0])}
        stats = {k: summary(v) for k, v in times.items()}
        base = min(stats["fp32"]["median_us"], stats["fp32 no-oneDNN"]["median_us"])
        row = {"case": name, **{k: {**s, "speedup_vs_fp32": base / s["median_us"],
                                    "sqnr_db": quality.get(k)} for k, s in stats.items()}}
        rows.append(row)
        d, w = row["int8 dynamic"], row["int8 weight-only"]
        print(f"{name:34} {stats['fp32']['median_us']:10.0f} {stats['fp32 no-oneDNN']['median_us']:10.0f} {d['median_us']:9.0f} {d['speedup_vs_fp32']:7.2f} {d['sqnr_db']:6.1f} "
              f"{w['median_us']:9.0f} {w['speedup_vs_fp32']:7.2f} {w['sqnr_db']:6.1f}")
    path = write_results("bench_rnn", {"machine": machine_info(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
