"""Whole-model speed (issue 9, point 4b): mono-quant's int8 dynamic, int8
weight-only, int4 and fp16 against fp32 eager, torch.ao ``quantize_dynamic``
(fbgemm) and ONNX Runtime int8 dynamic quantization, interleaved in one
process (contenders timed in rotation, each round starting one contender
later, after a warm-up; median with p10/p90 of the per-call times).

Models, built from code with random weights (speed only):
- a 6-layer BERT-style encoder written with nn.Linear (Q, K, V, output,
  FFN up and down; LayerNorm, GELU, ``F.scaled_dot_product_attention``),
  hidden 384 or 768, heads of 64, at rows = batch x seq 128;
- a small CNN (Conv2d 3->C, C->C, max-pool, C->2C, each + ReLU, global
  average pool, Linear 2C->10) on 8x8, 16x16 or 32x32 inputs.

Each case runs at every requested thread count (``torch.set_num_threads``
and ORT's ``intra_op_num_threads``) and every requested mono-quant kernel
level (``mono_quant.kernels.set_isa``: ``avx2`` on an AVX-512 host is the
stand-in for an AVX2-only CPU).  Time ratios are contender / fp32 (lower is
faster).  ONNX Runtime is optional (``pip install .[bench]``); without it
that column is empty.

With ``--isa avx2 --torch-isa avx2`` torch's libraries (MKL, oneDNN, fbgemm)
are capped at AVX2 too (isa_cap.py), as on an AVX2-only CPU; otherwise the
fp32 baseline runs at the host's best level whatever mono-quant's.

Usage: python benchmarks/bench_models.py [--quick] [--threads 2,1] [--isa avx512,avx2]
                                         [--budget S] [--cases bert384-128,cnn32x8-b1,...] [--crossover]
                                         [--rows 16,128,4096] [--torch-isa avx2] [--clock cpu] [--background-load N]
                                         [--stat median|mean]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings

if any(a == "--torch-isa" or a.startswith("--torch-isa=") for a in sys.argv):
    import isa_cap  # noqa: F401  (before torch: caps torch's libraries; one --isa level)

import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from common import background_load, interleaved, machine_info, summary, write_results
from mono_quant import kernels

warnings.filterwarnings("ignore")


class EncoderBlock(nn.Module):
    """Post-norm BERT layer: self-attention (heads of 64) then a 4x FFN with GELU."""

    def __init__(self, hidden: int):
        super().__init__()
        self.heads = hidden // 64
        self.query, self.key = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.ffn_up, self.ffn_down = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape

        def heads(t):
            return t.view(batch, seq, self.heads, 64).transpose(1, 2)

        a = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)))
        x = self.norm1(x + self.attn_out(a.transpose(1, 2).reshape(batch, seq, hidden)))
        return self.norm2(x + self.ffn_down(F.gelu(self.ffn_up(x))))


class Encoder(nn.Module):
    def __init__(self, hidden: int, layers: int = 6):
        super().__init__()
        self.layers = nn.ModuleList([EncoderBlock(hidden) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SmallCNN(nn.Module):
    def __init__(self, channels: int, classes: int = 10):
        super().__init__()
        c = channels
        self.conv1, self.conv2 = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.conv3 = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.relu(self.conv3(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


#: the timing clock: wall time, or with --clock cpu the calling thread's CPU time (one
#: thread: on a shared machine it leaves out the time other processes held the core)
CLOCK = [time.perf_counter]
# The statistic the ratios compare: the median, or (under --background-load, where a call either runs
# through or loses a scheduler slice and the median jumps between the two modes from run to run) the
# mean, which is what a loop of calls pays.
STAT = ["median_us"]


def build_case(name: str):
    """``bert<hidden>-<rows>`` (batch = rows / 128, seq 128) or ``cnn<channels>x<size>-b<batch>``."""
    torch.manual_seed(0)
    if name.startswith("bert"):
        hidden, rows = (int(v) for v in name[4:].split("-"))
        return Encoder(hidden).eval(), torch.randn(rows // 128, 128, hidden)
    spec, batch = name[3:].split("-b")
    channels, size = (int(v) for v in spec.split("x"))
    return SmallCNN(channels).eval(), torch.randn(int(batch), 3, size, size)


QUICK_CASES = ["bert384-128", "bert384-1024", "bert768-128", "cnn32x8-b1", "cnn32x8-b64", "cnn32x32-b1", "cnn32x32-b64"]
FULL_CASES = ["bert384-128", "bert384-1024", "bert384-4096", "bert768-128", "bert768-1024", "bert768-4096",
              "cnn16x8-b1", "cnn16x8-b64", "cnn32x8-b1", "cnn32x8-b64", "cnn64x16-b1", "cnn64x16-b64",
              "cnn32x32-b1", "cnn32x32-b64", "cnn64x32-b1", "cnn64x32-b64"]
MQ_VARIANTS = {"int8 dyn": dict(dtype="int8"), "int8 w-only": dict(dtype="int8", activations=None),
               "int4": dict(dtype="int4"), "fp16": dict(dtype="fp16")}


def fbgemm_model(model):
    """torch.ao quantize_dynamic (Linear only, fbgemm), or None where this torch lacks it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    except Exception:
        return None


def ort_sessions(model, x, threads, workdir):
    """{threads: ORT session of the int8 dynamic-quantized ONNX export}, or {} without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return {}
    fp32_path, int8_path = os.path.join(workdir, "model.onnx"), os.path.join(workdir, "model.int8.onnx")
    torch.onnx.export(model, (x,), fp32_path, dynamo=False, input_names=["x"], output_names=["y"])
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # ORT's "consider pre-processing" notice
    quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8)
    sessions = {}
    for n in threads:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = n, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # ORT's workers spin between its runs and hold the cores the other contenders of the rotation
        # need (2 threads, Intel, 1 Dec: fp32's p10-p90 spread over 15-49 ms with them spinning)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[n] = ort.InferenceSession(int8_path, options, providers=["CPUExecutionProvider"])
    return sessions


def without_amx(model, x):
    """model(x) with the AVX-512 level's int8 matmul on AVX-512 VNNI instead of AMX (the same bits)."""
    kernels.SETTINGS.set_amx(False)
    try:
        return model(x)
    finally:
        kernels.SETTINGS.set_amx(True)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.reshape(1, -1).double(), b.reshape(1, -1).double()))


def run_case(name, threads, isas, use_ort, budget_s):
    model, x = build_case(name)
    quantized = {label: mq.quantize(model, **kw).model.eval() for label, kw in MQ_VARIANTS.items()}
    fbgemm = fbgemm_model(model)
    with tempfile.TemporaryDirectory() as workdir:
        sessions = ort_sessions(model, x, threads, workdir) if use_ort else {}
    x_np = x.numpy()
    rows = []
    with torch.no_grad():
        reference = model(x)
        for isa in isas:
            previous = kernels.set_isa(isa)
            try:
                for n in threads:
                    torch.set_num_threads(n)
                    contenders = {"fp32": lambda: model(x)}
                    contenders.update({label: (lambda m=m: m(x)) for label, m in quantized.items()})
                    if isa == "avx512" and kernels.SETTINGS.amx:  # the AVX-512 VNNI kernel beside AMX
                        contenders["int8 dyn vnni"] = lambda m=quantized["int8 dyn"]: without_amx(m, x)
                    if fbgemm is not None:
                        contenders["fbgemm dyn"] = lambda: fbgemm(x)
                    if n in sessions:
                        contenders["ORT int8 dyn"] = lambda s=sessions[n]: s.run(None, {"x": x_np})
                    # rounds from a time budget: fast cases get hundreds (on a loaded machine the
                    # median needs them; the mean, thousands: a lost slice is a rare 20-60 ms call),
                    # the slowest at least 5
                    t0 = time.perf_counter()
                    for fn in contenders.values():
                        fn()
                    round_s = time.perf_counter() - t0
                    rounds = int(min(max(budget_s / max(round_s, 1e-6), 5), 400 if STAT[0] == "median_us" else 20000))
                    times = interleaved(contenders, rounds, warmup=2, clock=CLOCK[0])
                    stats = {label: summary(samples) for label, samples in times.items()}
                    base = stats["fp32"][STAT[0]]
                    outputs = {label: m(x) for label, m in quantized.items()}
                    if fbgemm is not None:
                        outputs["fbgemm dyn"] = fbgemm(x)
                    if n in sessions:
                        outputs["ORT int8 dyn"] = torch.from_numpy(sessions[n].run(None, {"x": x_np})[0])
                    for label, s in stats.items():
                        s["ratio_vs_fp32"] = s[STAT[0]] / base
                        s["ratio_stat"] = STAT[0]
                        if label in outputs:
                            s["cosine_vs_fp32"] = cosine(outputs[label], reference)
                    row = {"case": name, "isa": isa, "threads": n, "rounds": rounds, "contenders": stats}
                    rows.append(row)
                    print_row(row)
            finally:
                kernels.set_isa(previous)
    return rows


CROSSOVER_SHAPES = [(384, 384), (1536, 384), (384, 1536), (768, 768), (3072, 768), (768, 3072)]
CROSSOVER_ROWS = [1, 4, 16, 32, 64, 128, 256, 512]


def crossover(threads, isas, repeats, row_counts=CROSSOVER_ROWS):
    """Weight-only int8 and int4 Linear: the packed kernels against dequantize-once +
    BLAS (each forced through its threshold table), as time / fp32 F.linear, per row
    count: where the BLAS path starts to win is the BLAS_MIN_ROWS rule."""
    from mono_quant import int4
    from mono_quant.modules import linear

    tables = {"int8 w-only": linear.BLAS_MIN_ROWS, "int4": int4.BLAS_MIN_ROWS}
    saved = {name: dict(t) for name, t in tables.items()}
    saved_out = dict(int4.BLAS_MAX_OUT_FEATURES)
    for isa in int4.BLAS_MAX_OUT_FEATURES:  # the row rule alone decides here, whatever the width
        int4.BLAS_MAX_OUT_FEATURES[isa] = 1 << 62
    rows_out = []
    try:
        for (n, k) in CROSSOVER_SHAPES:
            torch.manual_seed(0)
            layer = nn.Linear(k, n).eval()
            variants = {"int8 w-only": mq.quantize(layer, dtype="int8", activations=None).model,
                        "int4": mq.quantize(layer, dtype="int4").model}
            for isa in isas:
                previous = kernels.set_isa(isa)
                for nt in threads:
                    torch.set_num_threads(nt)
                    for m in row_counts:
                        x = torch.randn(m, k)

                        def forced(label, q, rows_from):
                            def call():
                                tables[label][isa] = rows_from
                                return q(x)
                            return call

                        contenders = {"fp32": lambda: layer(x)}
                        for label, q in variants.items():
                            contenders[label + " packed"] = forced(label, q, 1 << 62)
                            contenders[label + " blas"] = forced(label, q, 1)
                        with torch.no_grad():
                            times = interleaved(contenders, repeats, warmup=2, clock=CLOCK[0])
                        # median and p10 ratios: on a loaded machine the p10 (the calls no other
                        # process interrupted) shows the paths' own cost best
                        stats = {name: summary(t) for name, t in times.items()}
                        base, base10 = stats["fp32"]["median_us"], stats["fp32"]["p10_us"]
                        row = {"shape": f"{n}x{k}", "isa": isa, "threads": nt, "rows": m, "fp32_us": base,
                               "fp32_p10_us": base10}
                        for name, st in stats.items():
                            if name != "fp32":
                                row[name] = st["median_us"] / base
                                row[name + " p10"] = st["p10_us"] / base10
                        rows_out.append(row)
                        cells = [f"{name} {row[name]:.2f}/{row[name + ' p10']:.2f}"
                                 for name in contenders if name != "fp32"]
                        print(f"{n}x{k:<6} {isa:<6} {nt:>3} {m:>5} {base:>10.1f}  " + "  ".join(cells), flush=True)
                kernels.set_isa(previous)
    finally:
        for name, t in tables.items():
            t.update(saved[name])
        int4.BLAS_MAX_OUT_FEATURES.update(saved_out)
    return rows_out


COLUMNS = ["int8 dyn", "int8 dyn vnni", "fbgemm dyn", "ORT int8 dyn", "int8 w-only", "int4", "fp16"]


def print_header():
    print(f"{'case':<14} {'isa':<6} {'thr':>3} {'fp32 ms':>9}  " + "  ".join(f"{c:>13}" for c in COLUMNS)
          + f"   ({STAT[0][:-3]} time / fp32, lower is faster; [p10-p90] of fp32 ms)")


def print_row(row):
    st = row["contenders"]
    fp = st["fp32"]
    cells = []
    for c in COLUMNS:
        cells.append(f"{st[c]['ratio_vs_fp32']:>13.2f}" if c in st else f"{'-':>13}")
    print(f"{row['case']:<14} {row['isa']:<6} {row['threads']:>3} {fp[STAT[0]] / 1e3:>9.2f}  " + "  ".join(cells)
          + f"   [{fp['p10_us'] / 1e3:.2f}-{fp['p90_us'] / 1e3:.2f}]", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases (no 4096 rows, fewer CNNs)")
    parser.add_argument("--cases", default=None, help="comma-separated case names (see build_case)")
    parser.add_argument("--threads", default="2,1")
    parser.add_argument("--isa", default=None, help="comma-separated kernel levels; default: the best, then avx2")
    parser.add_argument("--repeats", type=int, default=15, help="rounds of the --crossover sweep")
    parser.add_argument("--budget", type=float, default=10.0,
                        help="seconds of timed rounds per case, level and thread count (5 rounds at least)")
    parser.add_argument("--no-ort", action="store_true")
    parser.add_argument("--out", default="bench_models")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: the calling thread's CPU time per call (needs --threads 1)")
    parser.add_argument("--rows", default=None, help="--crossover row counts (default 1,4,...,512)")
    parser.add_argument("--torch-isa", choices=["native", "avx2"], default="native",
                        help="cap torch's MKL / oneDNN / fbgemm at AVX2 too (needs --isa avx2)")
    parser.add_argument("--background-load", type=int, default=0, metavar="N",
                        help="run N CPU-bound processes beside the benchmark (common.background_load)")
    parser.add_argument("--stat", choices=["median", "mean"], default=None,
                        help="what the ratios compare (default: median; mean under --background-load)")
    parser.add_argument("--crossover", action="store_true",
                        help="only the weight-only packed-kernel vs dequantize+BLAS sweep over row counts")
    args = parser.parse_args()
    if args.torch_isa != "native" and args.isa != "avx2":
        raise SystemExit("--torch-isa avx2 caps the whole process: pass --isa avx2 alone with it")
    if args.clock == "cpu":
        if args.threads != "1":
            raise SystemExit("--clock cpu needs --threads 1 (helper threads' work would not be counted)")
        CLOCK[0] = time.thread_time
    STAT[0] = (args.stat or ("mean" if args.background_load else "median")) + "_us"
    cases = args.cases.split(",") if args.cases else (QUICK_CASES if args.quick else FULL_CASES)
    threads = [int(t) for t in args.threads.split(",")]
    best = kernels.cpu_info()["best_isa"]
    isas = args.isa.split(",") if args.isa else ([best, "avx2"] if best == "avx512" else [best])
    info = machine_info()
    info["torch_isa"], info["clock"], info["background_load"] = args.torch_isa, args.clock, args.background_load
    print(f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, best ISA {best}; levels {isas}; "
          f"threads {threads}; torch capped: {args.torch_isa}; background load {args.background_load} processes")
    if args.crossover:
        print("shape     isa    thr  rows    fp32 us  (time / fp32 F.linear: median / p10)")
        path = write_results(args.out + "_crossover", {"machine": info, "rows": crossover(
            threads, isas, args.repeats, [int(r) for r in args.rows.split(",")] if args.rows else CROSSOVER_ROWS)})
        print(f"wrote {path}")
        return
    print_header()
    rows = []
    with background_load(args.background_load):
        for name in cases:
            rows += run_case(name, threads, isas, not args.no_ort, args.budget)
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    path = write_results(args.out, {"machine": info, "cases": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
