"""INT8 Linear speed: mono-quant's QuantizedLinear (dynamic int8 and
weight-only) against fp32 F.linear, fbgemm's dynamic linear
(torch.ops.quantized.linear_dynamic, what quantize_dynamic uses) and
torch._weight_int8pack_mm, all interleaved in one process.

Batch-1 cases rotate several weight copies so every call streams its weight
from DRAM (the 32 MiB L3 can't hold them); GB/s counts the weight bytes each
contender must read.  A `copy_` of 256 MiB measures the machine's streaming
bandwidth in the same run.  Also times the demo's transformer-like model at
batch 1 and 32 (int8 vs fp32) and a GEMV/GEMM tile sweep for the switch point.

Targets (docs/benchmarks.md): batch 1 >= 3.0x fp32 on 4096x4096, 11008x4096,
4096x11008; batch 32 and 128 (4096x4096) >= 1.5x fp32 and >= fbgemm.

Usage: python benchmarks/bench_linear.py [--repeats N] [--quick] [--threads T] [--background-load N]
       [--isa avx2|avx2-maddubs|...] [--torch-isa avx2] (see isa_cap.py)
"""
from __future__ import annotations

import argparse
import copy
import warnings

import isa_cap  # noqa: F401  (before torch: --isa / --torch-isa set the environment)
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
import common
from common import background_load, machine_info, summary, write_results
from mono_quant import kernels

warnings.filterwarnings("ignore")


def interleaved(contenders, repeats=15, warmup=2):
    """common.interleaved with a rotating start, timed by isa_cap.clock (wall or CPU time)."""
    return common.interleaved(contenders, repeats, warmup, order="rotate", clock=isa_cap.clock)

L3_BYTES = 32 << 20


def probe_fbgemm():
    """torch.ops.quantized.linear_dynamic with a prepacked per-channel qint8 weight, or None."""
    try:
        w = torch.randn(32, 16)
        qw = torch.quantize_per_channel(w, (w.abs().amax(1) / 127).double(), torch.zeros(32, dtype=torch.long), 0,
                                        torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qw, None)
        torch.ops.quantized.linear_dynamic(torch.randn(2, 16), packed)
        return True
    except Exception:  # the op is gone from this torch build
        return False


def probe_int8pack_mm():
    try:
        torch._weight_int8pack_mm(torch.randn(2, 32), torch.zeros(16, 32, dtype=torch.int8), torch.ones(16))
        return True
    except Exception:
        return False


def stream_bandwidth(repeats: int) -> float:
    """GB/s of copy_ over 256 MiB (read + write)."""
    a = torch.empty(64 << 20)
    b = torch.empty_like(a)
    a.fill_(1.0)
    t = summary(interleaved({"copy": lambda: b.copy_(a)}, repeats=repeats)["copy"])
    return 2 * a.numel() * 4 / (t["median_us"] * 1e-6) / 1e9


def isa_levels():
    levels = ["scalar", "avx2", "avx512"]
    return levels[: levels.index(mq.cpu_info()["best_isa"]) + 1]


def forced(isa, module, x):
    """module(x) with the kernels capped at one ISA level."""
    from mono_quant import _C

    previous = _C.set_isa(isa)
    try:
        return module(x)
    finally:
        _C.set_isa(previous)


class Rotation:
    """Calls a function on copy i, i+1, ... of its arguments so the weights leave the cache."""

    def __init__(self, items):
        self.items, self.i = items, 0

    def next(self):
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]


def build_case(n, k, copies, fbgemm, int8pack):
    floats, dyn, wo, fb, i8, dyn7 = [], [], [], [], [], []
    for c in range(copies):
        torch.manual_seed(c)
        lin = nn.Linear(k, n, bias=False).eval()
        floats.append(lin)
        dyn.append(mq.quantize(lin, activations="dynamic").model)
        dyn7.append(copy.copy(dyn[-1]))  # the same buffers, 7-bit activations (reduce_range)
        dyn7[-1].set_reduce_range(True)
        wo.append(mq.quantize(lin, activations=None).model)
        qw = dyn[-1]
        if fbgemm:
            tq = torch.quantize_per_channel(lin.weight.detach(), qw.weight_scale.double(),
                                            qw.weight_zero_point.long(), 0, torch.qint8)
            fb.append(torch.ops.quantized.linear_prepack(tq, None))
        if int8pack:
            i8.append((qw.int_weight(), qw.weight_scale.float(), qw.weight_scale.bfloat16()))
    return floats, dyn, wo, fb, i8, dyn7


def bench_linear(shapes, batches, repeats, fbgemm, int8pack, rows):
    for n, k in shapes:
        int8_bytes = n * k
        copies = max(2, -(-3 * L3_BYTES // (2 * int8_bytes))) if int8_bytes < L3_BYTES else 2
        copies = min(copies, 16)
        floats, dyn, wo, fb, i8, dyn7 = build_case(n, k, copies, fbgemm, int8pack)
        for m in batches:
            x = torch.randn(m, k)
            xb = x.bfloat16()
            rot = {name: Rotation(list(range(copies))) for name in ("fp32", "dyn", "wo", "fb", "i8", "i8bf", "dyn7")}
            contenders = {
                "fp32 F.linear": lambda: F.linear(x, floats[rot["fp32"].next()].weight),
                "mq dynamic int8": lambda: dyn[rot["dyn"].next()](x),
                "mq weight-only": lambda: wo[rot["wo"].next()](x),
            }
            if (n, k) == (4096, 4096) and m in (1, 32) and "avx2" in isa_levels() and isa_cap.ISA == "native":
                contenders["mq dynamic int8 (AVX2 forced)"] = lambda: forced("avx2", dyn[rot["dyn"].next()], x)
            if m >= 8:  # opt-in 7-bit activations, as fbgemm's own (torch.ao's dynamic Linear passes reduce_range=True)
                contenders["mq dynamic int8 reduce_range"] = lambda: dyn7[rot["dyn7"].next()](x)
            if fb:
                contenders["fbgemm linear_dynamic"] = lambda: torch.ops.quantized.linear_dynamic(x, fb[rot["fb"].next()],
                                                                                                True)
            if i8 and m == 1:  # its fp32 path is scalar-slow (0.1x fp32 at batch 1; minutes at batch 128)
                contenders["_weight_int8pack_mm fp32"] = lambda: torch._weight_int8pack_mm(
                    x, i8[rot["i8"].next()][0], i8[rot["i8"].i][1])
            if i8:
                contenders["_weight_int8pack_mm bf16"] = lambda: torch._weight_int8pack_mm(
                    xb, i8[rot["i8bf"].next()][0], i8[rot["i8bf"].i][2])
            with torch.no_grad():
                times = interleaved(contenders, repeats=repeats if m * n * k < 2 ** 30 else max(5, repeats // 2))
            stats = {name: summary(t) for name, t in times.items()}
            base = stats["fp32 F.linear"]["median_us"]
            row = {"shape": [n, k], "batch": m, "weight_copies": copies, "stats": stats, "ratios_vs_fp32": {},
                   "GBps": {}, "GOPs": {}}
            weight_bytes = {"fp32 F.linear": 4 * n * k, "_weight_int8pack_mm bf16": n * k + 2 * n}
            print(f"\n{n}x{k} batch {m} (weights rotated over {copies} copies)")
            for name, st in stats.items():
                us = st["median_us"]
                wb = weight_bytes.get(name, n * k + 4 * n)
                row["ratios_vs_fp32"][name] = base / us
                row["GBps"][name] = wb / (us * 1e-6) / 1e9
                row["GOPs"][name] = 2 * m * n * k / (us * 1e-6) / 1e9
                print(f"  {name:<26} {us:9.1f} us [{st['p10_us']:8.1f} - {st['p90_us']:8.1f}]"
                      f"  {row['GBps'][name]:6.1f} GB/s  {row['GOPs'][name]:7.1f} GOP/s  x{base / us:5.2f} vs fp32")
            if fb:
                row["dynamic_vs_fbgemm"] = stats["fbgemm linear_dynamic"]["median_us"] / stats["mq dynamic int8"]["median_us"]
                print(f"  mq dynamic vs fbgemm: x{row['dynamic_vs_fbgemm']:.2f}")
                if "mq dynamic int8 reduce_range" in stats:
                    row["dynamic_reduce_range_vs_fbgemm"] = (stats["fbgemm linear_dynamic"]["median_us"]
                                                             / stats["mq dynamic int8 reduce_range"]["median_us"])
                    print(f"  mq dynamic reduce_range vs fbgemm: x{row['dynamic_reduce_range_vs_fbgemm']:.2f}")
            rows.append(row)
        del floats, dyn, wo, fb, i8, dyn7


def bench_tiles(repeats):
    """The GEMV/GEMM switch, measured: M = 1..8 rows on 4096x4096 (weights
    rotated over 3 copies, so streamed from DRAM), the dynamic kernel forced
    to GEMV tiles (one panel, weight read once) or GEMM tiles (8 rows x 3
    panels) through _C.set_gemv_max_rows, interleaved."""
    from mono_quant import _C

    mods = [mq.quantize(nn.Linear(4096, 4096, bias=False).eval()).model for _ in range(3)]
    rot = Rotation(mods)
    out = {}
    print("\nGEMV/GEMM switch, 4096x4096 dynamic int8, weights from DRAM: us per call")

    def run(x, rows):
        previous = _C.set_gemv_max_rows(rows)
        try:
            rot.next()(x)
        finally:
            _C.set_gemv_max_rows(previous)

    for m in (1, 2, 3, 4, 5, 6, 8):
        x = torch.randn(m, 4096)
        with torch.no_grad():
            times = interleaved({"gemv": lambda: run(x, 8), "gemm": lambda: run(x, 0)}, repeats=repeats)
        s = {k: summary(v) for k, v in times.items()}
        out[m] = s
        print(f"  M={m}  GEMV tiles {s['gemv']['median_us']:8.1f} us   GEMM tiles {s['gemm']['median_us']:8.1f} us"
              f"   GEMM/GEMV x{s['gemm']['median_us'] / s['gemv']['median_us']:.2f}")
    return out


def bench_model(repeats):
    from mono_quant.demo import TransformerLike, _seeded

    model = _seeded(TransformerLike(), 1)
    qdyn = mq.quantize(model).model
    qwo = mq.quantize(model, activations=None).model
    rows = []
    for m in (1, 32):
        x = torch.randn(m, 256)
        with torch.no_grad():
            times = interleaved({"fp32": lambda: model(x), "int8 dynamic": lambda: qdyn(x),
                                 "int8 weight-only": lambda: qwo(x)}, repeats=repeats * 3)
        stats = {k: summary(v) for k, v in times.items()}
        base = stats["fp32"]["median_us"]
        print(f"\ndemo transformer-like, batch {m}")
        for name, st in stats.items():
            print(f"  {name:<18} {st['median_us']:8.1f} us [{st['p10_us']:.1f} - {st['p90_us']:.1f}]  x{base / st['median_us']:.2f} vs fp32")
        rows.append({"batch": m, "stats": stats, "ratios_vs_fp32": {k: base / v["median_us"] for k, v in stats.items()}})
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="only 4096x4096")
    parser.add_argument("--background-load", type=int, default=0, metavar="N",
                        help="run N CPU-bound processes beside the benchmark (common.background_load)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128], help="4096x4096 batch sizes")
    parser.add_argument("--no-extras", action="store_true", help="skip the tile sweep and the demo model")
    isa_cap.add_isa_arguments(parser)
    args = parser.parse_args()
    isa_cap.apply_isa()
    isa_cap.check_clock(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    info["isa"] = isa_cap.isa_description()
    info["linear_kernels"] = kernels.linear_kernels()
    fbgemm, int8pack = probe_fbgemm(), probe_int8pack_mm()
    info["baselines"] = {"fbgemm linear_dynamic": fbgemm, "_weight_int8pack_mm": int8pack}
    info["background_load"] = args.background_load
    with background_load(args.background_load):
        info["stream_GBps"] = stream_bandwidth(args.repeats)
        print(f"{info['cpu']}, {info['cores']} cores, torch threads {info['torch_threads']}, torch {info['torch']}, "
              f"ISA {info['dispatched_isa']}, kernels {info['linear_kernels']}")
        print(f"baselines: {info['baselines']}; streaming copy_ bandwidth {info['stream_GBps']:.1f} GB/s")
        rows = []
        bench_linear([(4096, 4096)], args.batches, args.repeats, fbgemm, int8pack, rows)
        if not args.quick:
            bench_linear([(11008, 4096), (4096, 11008)], [1], args.repeats, fbgemm, int8pack, rows)
            bench_linear([(768, 3072), (3072, 768)], [1, 32], args.repeats, fbgemm, int8pack, rows)
        tiles = {} if args.no_extras else bench_tiles(args.repeats)
        model_rows = [] if args.no_extras else bench_model(args.repeats)
    suffix = ((f"_{args.isa}" if args.isa != "native" else "") + (f"_t{args.threads}" if args.threads else "")
              + (f"_bg{args.background_load}" if args.background_load else ""))
    path = write_results("bench_linear" + suffix, {"machine": info, "linear": rows, "tiles": tiles, "model": model_rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
