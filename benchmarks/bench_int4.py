"""INT4 benchmark: linear speed vs fp32 / torch int4pack / mono-quant int8,
size (bits per weight), weight SQNR per method, quantization speed.

Run: .venv/bin/python benchmarks/bench_int4.py [--quick] [--threads T] [--background-load N]
     [--isa ...] [--torch-isa avx2] (isa_cap.py)
Prints tables and writes benchmarks/results/bench_int4.json.  Contenders are
interleaved (A B C A B C ...) after a warm-up; medians with p10/p90.  Batch-1
cases rotate several weight copies so the working set exceeds the 32 MiB L3.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import isa_cap  # noqa: F401  (before torch: --isa / --torch-isa set the environment)
import torch
import torch.nn.functional as F

import mono_quant as mq
from mono_quant import _C, kernels
from mono_quant.int4 import int4_linear, quantize_int4, set_int8_activations

from common import background_load

L3_BYTES = 32 << 20
SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (out, in)
BATCHES = [1, 8, 32]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def interleaved(fns: dict, reps: int, warmup: int = 2) -> dict:
    """Median / p10 / p90 seconds of each callable, run round-robin; the order
    rotates every round so no contender always follows the same one (the one
    after a 64 MiB fp32 matmul starts with cold caches and busy DRAM)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times = {k: [] for k in fns}
    for rep in range(reps):
        for j in range(len(names)):
            k = names[(j + rep) % len(names)]
            t0 = isa_cap.clock()
            fns[k]()
            times[k].append(isa_cap.clock() - t0)
    return {k: {"median_s": statistics.median(v), "p10_s": percentile(v, 10), "p90_s": percentile(v, 90)}
            for k, v in times.items()}


def rotating(items):
    state = {"i": 0}

    def next_item():
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return next_item


def torch_int4pack(w: torch.Tensor, group: int):
    """torch._weight_int4pack_mm_for_cpu operands (bf16), or None if this torch lacks the op.
    Asymmetric RTN: w ~= (q - 8) * scale + zero, as torchao's int4 weight-only."""
    if not (hasattr(torch, "_weight_int4pack_mm_for_cpu") and hasattr(torch, "_convert_weight_to_int4pack_for_cpu")):
        return None
    n, k = w.shape
    g = w.reshape(n, k // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).reshape(n, k)
    zero = lo + 8 * scale
    packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = torch.stack([scale.T, zero.T], dim=-1).to(torch.bfloat16).contiguous()  # [k/group, n, 2]
    return packed, sz


def stream_bandwidth() -> float:
    """GB/s of a 256 MiB tensor copy (bytes read + written)."""
    a = torch.empty(64 << 20, dtype=torch.float32).fill_(1.0)
    b = torch.empty_like(a)
    r = interleaved({"copy": lambda: b.copy_(a)}, reps=5, warmup=1)["copy"]["median_s"]
    return 2 * a.numel() * 4 / r / 1e9


def bench_linear(reps: int, quick: bool) -> list:
    rows = []
    shapes = SHAPES[:1] if quick else SHAPES
    for n, k in shapes:
        torch.manual_seed(0)
        w = torch.randn(n, k) * 0.02
        qw, _ = quantize_int4(w, group_size=128, method="rtn")
        int4_bytes = qw.nbytes
        copies = max(2, -(-2 * L3_BYTES // int4_bytes))
        q_copies = [type(qw)(qw.qdata.clone(), qw.scale.clone(), qw.zero_point.clone(), qw.axis, qw.dtype,
                             qw.symmetric, qw.orig_dtype, qw.group_size, qw.orig_shape) for _ in range(copies)]
        tp = torch_int4pack(w, 128)
        tp_copies = [(tp[0].clone(), tp[1].clone()) for _ in range(copies)] if tp is not None else None
        lin = torch.nn.Linear(k, n, bias=False)
        with torch.no_grad():
            lin.weight.copy_(w)
        q8 = mq.quantize(torch.nn.Sequential(lin), dtype="int8")[0][0]
        next_q, next_tp = rotating(q_copies), rotating(tp_copies or [None])
        for m in ([1, 8] if quick else BATCHES):
            x = torch.randn(m, k)
            xb = x.to(torch.bfloat16)
            fp32_act = lambda: (set_int8_activations(False), int4_linear(x, next_q()), set_int8_activations(True))
            
            fns = {"fp32 F.linear": lambda: F.linear(x, w),
                   "int4 mono-quant (default: int8 act, VNNI)": lambda: int4_linear(x, next_q()),
                   "int4 mono-quant (fp32 act)": fp32_act}
            if tp_copies is not None:
                fns["torch int4pack bf16"] = lambda: (lambda p: torch._weight_int4pack_mm_for_cpu(xb, p[0], 128, p[1]))(
                    next_tp())
            if m == 1:
                fns["int8 mono-quant (dynamic, packed VNNI kernels)"] = lambda: q8(x)
            res = interleaved(fns, reps)
            base = res["fp32 F.linear"]["median_s"]
            for name, r in res.items():
                if name.startswith("int4"):
                    weight_bytes = int4_bytes
                elif name.startswith("torch int4pack"):
                    weight_bytes = w.numel() // 2 + tp[1].numel() * 2
                elif name.startswith("int8"):
                    weight_bytes = q8.weight_nbytes()
                else:
                    weight_bytes = w.numel() * 4
                rows.append({"shape": [n, k], "batch": m, "contender": name, **r,
                             "speedup_vs_fp32": base / r["median_s"],
                             "weight_GBps": weight_bytes / r["median_s"] / 1e9})
        del q_copies, tp_copies, w, q8
    return rows


def bench_accuracy(quick: bool) -> list:
    rows = []
    g = torch.Generator().manual_seed(0)
    shape = (256, 4096) if quick else (1024, 4096)
    data = {"gaussian": torch.randn(shape, generator=g) * 0.02,
            "student_t(df=4)": torch.distributions.StudentT(4.0).sample(shape) * 0.02}
    for dist, w in data.items():
        for group in (32, 64, 128):
            res = {m: quantize_int4(w, group_size=group, method=m, with_error=True) for m in ("rtn", "mse", "hqq")}
            for m, (qw, sqnr) in res.items():
                rows.append({"dist": dist, "group": group, "method": m, "sqnr_db": sqnr,
                             "gain_vs_rtn_db": sqnr - res["rtn"][1], "bits_per_weight": 8 * qw.nbytes / w.numel()})
    return rows


def bench_quantize_speed(quick: bool) -> list:
    torch.manual_seed(0)
    w = torch.randn(4096, 4096) * 0.02
    out = []
    for m in ("rtn", "mse", "hqq"):
        reps = 2 if m == "hqq" or quick else 3
        r = interleaved({m: lambda m=m: quantize_int4(w, group_size=128, method=m)}, reps=reps, warmup=1)[m]
        out.append({"method": m, "weights": w.numel(), "median_s": r["median_s"],
                    "seconds_per_billion": r["median_s"] * 1e9 / w.numel()})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one shape, fewer reps (a smoke run)")
    parser.add_argument("--reps", type=int, default=21)
    parser.add_argument("--background-load", type=int, default=0, metavar="N",
                        help="run N CPU-bound processes beside the Linear timings (common.background_load)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--linear-only", action="store_true", help="skip the accuracy and quantization-speed tables")
    isa_cap.add_isa_arguments(parser)
    args = parser.parse_args()
    isa_cap.apply_isa()
    isa_cap.check_clock(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = kernels.cpu_info()
    env = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
           "mono_quant": mq.__version__, "isa": info["active_isa"],
           "flags": {k: v for k, v in info.items() if k not in ("best_isa", "active_isa")},
           "panel_min_batch": _C.q4_panel_min_m(),
           "torch_int4pack": hasattr(torch, "_weight_int4pack_mm_for_cpu"),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "loadavg": os.getloadavg(),
           "isa_cap": isa_cap.isa_description()}
    print(f"# {env['cpu']}, {env['cores']} cores, torch threads {env['torch_threads']}, torch {env['torch']}, "
          f"ISA {env['isa']}")
    env["copy_GBps"] = stream_bandwidth()
    print(f"# memory copy bandwidth: {env['copy_GBps']:.1f} GB/s (read + write)")
    t0 = time.time()
    env["background_load"] = args.background_load
    with background_load(args.background_load):
        linear = bench_linear(args.reps if not args.quick else 5, args.quick)
    print("\n## Linear (group 128, asymmetric)\n")
    print(f"{'shape (out x in)':>18} {'M':>3}  {'contender':<58} {'median us':>10} {'p10':>9} {'p90':>9} "
          f"{'vs fp32':>8} {'GB/s':>6}")
    for r in linear:
        print(f"{'%dx%d' % tuple(r['shape']):>18} {r['batch']:>3}  {r['contender']:<58} {r['median_s'] * 1e6:>10.0f} "
              f"{r['p10_s'] * 1e6:>9.0f} {r['p90_s'] * 1e6:>9.0f} {r['speedup_vs_fp32']:>7.2f}x "
              f"{r['weight_GBps']:>6.1f}")
    acc = [] if args.linear_only else bench_accuracy(args.quick)
    print("\n## Weight SQNR (dB) per method\n")
    print(f"{'distribution':<16} {'group':>5} {'method':>6} {'SQNR dB':>8} {'vs rtn':>7} {'bits/w':>7}")
    for r in acc:
        print(f"{r['dist']:<16} {r['group']:>5} {r['method']:>6} {r['sqnr_db']:>8.2f} {r['gain_vs_rtn_db']:>+7.2f} "
              f"{r['bits_per_weight']:>7.3f}")
    speed = [] if args.linear_only else bench_quantize_speed(args.quick)
    print("\n## Quantization speed (4096x4096, group 128)\n")
    for r in speed:
        print(f"{r['method']:>6}: {r['median_s'] * 1e3:8.1f} ms  = {r['seconds_per_billion']:6.1f} s per 1e9 weights")
    print(f"\n# total {time.time() - t0:.0f} s")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    suffix = ((f"_{args.isa}" if args.isa != "native" else "") + (f"_t{args.threads}" if args.threads else "")
              + (f"_bg{args.background_load}" if args.background_load else ""))
    path = out / f"bench_int4{suffix}.json"
    path.write_text(json.dumps({"env": env, "linear": linear, "accuracy": acc, "quantize_speed": speed}, indent=1))
    print(f"# wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
