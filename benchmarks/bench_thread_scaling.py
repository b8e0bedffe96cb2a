"""2 threads against 1, kernel family by kernel family: where does a second
thread fail to pay?

For each family (int8 dynamic / weight-only Linear, fp16 / bf16 Linear,
int4 Linear, the quantization drivers, static int8 conv and linear, fp16
convs) and shape (BERT-sized layers, hidden 384 / 768, at 1..4096 rows;
narrow heads; ResNet-18 and small-CNN convs), the C entry point is called
with nthreads=1 and nthreads=2, interleaved (1 2 / 2 1 alternating), and the
time ratio t(2 threads) / t(1 thread) is reported (each round: the fastest
call of each over a few ms), median over rounds with p10-p90.  Ideal is
0.50; a job left on one thread shows ~1.00.  "caller cpu" is the same ratio
of the calling thread's CPU time: its share of the work (a helper kept off
its core by other processes leaves its pieces to the caller: ~1.00 then
too).  The column "split" counts the 2-thread call's parallel loops that
were cut for two threads (``_C.linear_kernels()["split_calls"]``, per
mq_parallel_for call; a call may run 1-3 of them).  On a shared host the
ratios are noisy: rely on "split" and on large effects.

Usage: python benchmarks/bench_thread_scaling.py [--isa avx2] [--families int8dyn,fp16,...]
                                                 [--rounds 9] [--quick] [--out NAME]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import isa_cap  # noqa: F401  (before torch and mono_quant: --isa)

import numpy as np
import torch

from common import machine_info, write_results
from mono_quant import _C
from mono_quant.packing import pack_int8_linear
from mono_quant.tensor import QuantizedWeight

FAMILIES = ["int8dyn", "int8dyn_u7", "int8wo", "int8wo_f16x", "fp16", "bf16", "int4", "quant", "static",
            "h16conv"]
BERT_ROWS = [1, 16, 64, 128, 512, 1024, 4096]
BERT_LAYERS = [(384, 384), (1536, 384), (384, 1536), (768, 768), (3072, 768), (768, 3072)]  # (out, in)
NARROW = [(4096, 16, 768), (4096, 2, 768), (1024, 8, 4096)]  # (rows, out, in): heads, LoRA-sized outputs


def split_count() -> int:
    return int(_C.linear_kernels()["split_calls"])


def time_call(fn, min_seconds: float = 3e-3, min_calls: int = 3):
    """(wall, caller CPU) seconds: fn's fastest call among those filling min_seconds (at least
    min_calls; on a shared host the fastest is the one least disturbed by other processes), and
    the median of the calling thread's CPU time (thread_time: only the pieces it ran; the median,
    as a call whose helper took every piece costs the caller nothing)."""
    best, cpus, t_end = float("inf"), [], time.perf_counter() + min_seconds
    while len(cpus) < min_calls or time.perf_counter() < t_end:
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        best = min(best, time.perf_counter() - t0)
        cpus.append(time.thread_time() - c0)
    return best, statistics.median(cpus)


def scaling(make, rounds: int) -> dict:
    """make(nthreads) -> a callable; the 2-thread / 1-thread wall-time ratio, interleaved, and
    the calling thread's CPU-time ratio (its share of the work: 0.5 when two threads split it
    evenly, 1.0 when it did all; less sensitive to other processes than the wall time, though a
    helper kept off its core by them leaves its pieces to the caller)."""
    one, two = make(1), make(2)
    one(), two()  # warm-up (allocations, pool start)
    before = split_count()
    two()
    split = split_count() - before
    ratios, cpus, t1s = [], [], []
    for r in range(rounds):
        if r % 2:
            (t2, c2), (t1, c1) = time_call(two), time_call(one)
        else:
            (t1, c1), (t2, c2) = time_call(one), time_call(two)
        ratios.append(t2 / t1)
        cpus.append(c2 / c1 if c1 > 0 else float("nan"))
        t1s.append(t1)
    vals = sorted(ratios)
    pct = lambda v, q: v[min(len(v) - 1, int(q * len(v)))]  # noqa: E731
    return {"ratio": statistics.median(vals), "p10": pct(vals, 0.1), "p90": pct(vals, 0.9),
            "caller_cpu_ratio": statistics.median(cpus), "t1_ms": statistics.median(t1s) * 1e3,
            "split_calls": split}


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- families: each yields (label, make) -------------------------------------------------------


def linear_shapes(quick: bool):
    rows = [1, 128, 1024, 4096] if quick else BERT_ROWS
    layers = BERT_LAYERS[:3] + BERT_LAYERS[4:5] if quick else BERT_LAYERS
    for out, k in layers:
        for m in rows:
            yield m, out, k
    yield from NARROW


def int8_linear(mode: str, reduce_range: bool = False, x_dtype=torch.float32):
    def cases(quick):
        for m, n, k in linear_shapes(quick):
            w = rand(n, k, seed=1)
            qw = QuantizedWeight(torch.randint(-127, 128, (n, k), dtype=torch.int8), w.abs().amax(1) / 127,
                                 torch.zeros(n, dtype=torch.int32), 0, "int8", True, torch.float32)
            p = pack_int8_linear(qw)
            info = p["weight_packed_info"]
            x = rand(m, k, seed=2).to(x_dtype)
            xa = x.numpy() if x_dtype == torch.float32 else x.view(torch.int16).numpy()
            args = (xa, p["weight_packed"].numpy(), p["weight_colsum"].numpy(), qw.scale.numpy(),
                    qw.zero_point.numpy(), rand(n, seed=3).numpy(), n, bool(int(info[3])))

            def make(t, args=args):
                return lambda: _C.linear_int8(*args, mode=mode, nthreads=t, reduce_range=reduce_range)
            yield f"{m}x{n}x{k}", make
    return cases


def half_linear(bf16: bool):
    def cases(quick):
        for m, n, k in linear_shapes(quick):
            w = rand(n, k, seed=1)
            wa = w.to(torch.bfloat16).view(torch.int16).numpy() if bf16 else w.half().numpy()
            x, b = rand(m, k, seed=2).numpy(), rand(n, seed=3).numpy()

            def make(t, x=x, wa=wa, b=b):
                return lambda: _C.h16_linear(x, wa, bf16, bias=b, nthreads=t)
            yield f"{m}x{n}x{k}", make
    return cases


def int4_cases(quick):
    from mono_quant.int4 import quantize_int4
    for m, n, k in linear_shapes(quick):
        qw, _ = quantize_int4(rand(n, k, seed=1), group_size=128)
        x, b = rand(m, k, seed=2).numpy(), rand(n, seed=3).numpy()
        args = (x, qw.qdata.numpy(), qw.scale.numpy(), qw.zero_point.numpy(), 128, b)

        def make(t, args=args):
            return lambda: _C.q4_linear(*args, nthreads=t)
        yield f"{m}x{n}x{k}", make


def quant_cases(quick):
    for n, k in [(384, 384), (1536, 384), (768, 768), (3072, 768), (64, 64), (256, 128), (30522, 768)]:
        w = rand(n, k, seed=1).numpy()
        yield f"fused {n}x{k}", lambda t, w=w: (lambda: _C.quantize_rows_fused(w, -128, 127, True, False, nthreads=t))
        yield f"minmax {n}x{k}", lambda t, w=w: (lambda: _C.rows_minmax(w, nthreads=t))
        yield f"qpack {n}x{k}", lambda t, w=w: (lambda: _C.quantize_pack_int8(w, -127, 127, True, nthreads=t))
        q = np.random.default_rng(0).integers(-127, 128, (n, k), dtype=np.int8)
        yield f"pack {n}x{k}", lambda t, q=q: (lambda: _C.pack_int8(q, nthreads=t))


ACT_NONE = (-float("inf"), float("inf"))
CONVS = [  # (batch, c, h, w, n, kernel, stride, padding)
    (1, 64, 56, 56, 64, 3, 1, 1), (8, 64, 56, 56, 64, 3, 1, 1), (1, 128, 28, 28, 128, 3, 1, 1),
    (1, 256, 14, 14, 256, 3, 1, 1), (1, 512, 7, 7, 512, 3, 1, 1), (8, 512, 7, 7, 512, 3, 1, 1),
    (1, 64, 56, 56, 128, 1, 2, 0), (1, 3, 224, 224, 64, 7, 2, 3),
    (1, 3, 32, 32, 16, 3, 1, 1), (8, 16, 32, 32, 16, 3, 1, 1), (1, 16, 16, 16, 32, 3, 1, 1), (64, 32, 8, 8, 64, 3, 1, 1),
]


def static_cases(quick):
    for b, c, h, w, n, ks, st, pd in CONVS:
        x = torch.randint(-127, 128, (b, h, w, c), dtype=torch.int8).numpy()
        wq = torch.randint(-127, 128, (n, c, ks, ks), dtype=torch.int8)
        qw = QuantizedWeight(wq, torch.ones(n), torch.zeros(n, dtype=torch.int32), 0, "int8", True, torch.float32)
        p = pack_int8_linear(qw, groups=1)
        oh, ow = (h + 2 * pd - ks) // st + 1, (w + 2 * pd - ks) // st + 1
        out = np.empty((b, oh, ow, n), np.int8)
        args = (x, p["weight_packed"].numpy(), p["weight_colsum"].numpy(), np.full(n, 1e-3, np.float32), None,
                rand(n).numpy(), out, bool(int(p["weight_packed_info"][3])), (ks, ks), (st, st), (pd, pd), (1, 1),
                1, *ACT_NONE, 0.5)
        yield f"conv {b}x{c}x{h}x{w}->{n} k{ks}s{st}", lambda t, a=args: (lambda: _C.conv2d_static(*a, t, 0, 0))
    for m, n, k in linear_shapes(True):
        x = torch.randint(-127, 128, (m, 1, 1, k), dtype=torch.int8).numpy()
        qw = QuantizedWeight(torch.randint(-127, 128, (n, k), dtype=torch.int8), torch.ones(n),
                             torch.zeros(n, dtype=torch.int32), 0, "int8", True, torch.float32)
        p = pack_int8_linear(qw, groups=1)
        out = np.empty((m, 1, 1, n), np.int8)
        args = (x, p["weight_packed"].numpy(), p["weight_colsum"].numpy(), np.full(n, 1e-3, np.float32), None,
                None, out, bool(int(p["weight_packed_info"][3])), (1, 1), (1, 1), (0, 0), (1, 1), 1, *ACT_NONE, 0.5)
        yield f"linear {m}x{n}x{k}", lambda t, a=args: (lambda: _C.conv2d_static(*a, t, 0, 0))


def h16conv_cases(quick):
    from mono_quant.kernels.half_conv import conv_algorithm
    for b, c, h, w, n, ks, st, pd in CONVS:
        x = rand(b, c, h, w).numpy()
        wa = rand(n, c, ks, ks, seed=1).half().numpy()
        algo = conv_algorithm((b, c, h, w), (n, c, ks, ks), (st, st), (pd, pd), (1, 1), 1)

        def make(t, x=x, wa=wa, st=st, pd=pd, algo=algo):
            return lambda: _C.h16_conv2d(x, wa, False, None, (st, st), (pd, pd), (1, 1), 1, nthreads=t,
                                         direct=algo == "direct", winograd=algo == "winograd")
        yield f"{algo} {b}x{c}x{h}x{w}->{n} k{ks}s{st}", make


CASES = {"int8dyn": int8_linear("dynamic"), "int8dyn_u7": int8_linear("dynamic", reduce_range=True),
         "int8wo": int8_linear("weight_only"), "int8wo_f16x": int8_linear("weight_only", x_dtype=torch.float16),
         "fp16": half_linear(False), "bf16": half_linear(True), "int4": int4_cases, "quant": quant_cases,
         "static": static_cases, "h16conv": h16conv_cases}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    isa_cap.add_isa_arguments(parser)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer row counts and layers")
    parser.add_argument("--only", default=None, help="substring a case label must contain")
    parser.add_argument("--out", default="bench_thread_scaling")
    args = parser.parse_args()
    isa_cap.apply_isa()
    torch.set_num_threads(2)  # the omp-team backend runs on torch's team
    families = args.families.split(",")
    print(f"isa {_C.get_isa()}, backend {_C.linear_kernels()['threads']}; t(2 threads) / t(1 thread), "
          f"median [p10-p90] of {args.rounds} interleaved rounds; 0.50 ideal, 1.00 no gain")
    print(f"{'family':12s} {'case':36s} {'split':>5s} {'1 thr ms':>9s} {'2/1':>6s}  p10-p90    caller cpu 2/1")
    rows = []
    for fam in families:
        for label, make in CASES[fam](args.quick):
            if args.only and args.only not in label:
                continue
            r = scaling(make, args.rounds)
            flag = "  <-- one thread" if r["split_calls"] == 0 and r["t1_ms"] > 0.1 else ""
            print(f"{fam:12s} {label:36s} {r['split_calls']:5d} {r['t1_ms']:9.3f} {r['ratio']:6.2f}  "
                  f"{r['p10']:.2f}-{r['p90']:.2f}  {r['caller_cpu_ratio']:6.2f}{flag}", flush=True)
            rows.append({"family": fam, "case": label, **r})
    write_results(args.out, {"machine": machine_info(), "isa": _C.get_isa(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
