"""Before/after of a kernel change in one process: the installed mono_quant._C
against another build of it (say the main branch's, copied aside), interleaved
with fp32, so the two builds meet the same machine load.

  weight-only  int8 weight-only Linear (_C.linear_int8 called directly, no
               Python layer), BERT and LLM shapes; each build streams its own
               copies of the weights (no L3 hits left by the other build).
  demo         the demo's transformer-like model (mono_quant.demo), int8
               dynamic, the build swapped under kernels.int8 per call.
  demo-weight-only  the same model, int8 weight-only.
  demo-fp16    the same model, fp16 (the build swapped under kernels.fp16).
  dynamic      dynamic int8 Linear (_C.linear_int8 mode 'dynamic', 8-bit activations)
               against fbgemm's linear_dynamic (reduce_range=True, as
               quantize_dynamic runs it), 4096x4096 at batch 8 / 32 / 128.
  int4         int4 group-128 Linear (_C.q4_linear called directly, int8
               activations where the kernels take them), the same shapes.

Order: a fresh random order each round (common.interleaved "shuffle"), so no
contender always follows fp32 or the other build.

Usage: python benchmarks/bench_ab.py --baseline /path/to/old/_C.cpython-311-x86_64-linux-gnu.so
           [weight-only|dynamic|int4|demo|demo-weight-only|demo-fp16] [--threads T] [--batches 1 32] [--repeats N] [--background-load N]
           [--shapes 768x768,3072x768]
           [--isa avx2 ...] [--torch-isa avx2] [--clock cpu] (see isa_cap.py)
"""
from __future__ import annotations

import argparse
import importlib.util
import warnings

import isa_cap  # noqa: F401  (before torch: --isa / --torch-isa set the environment)
import numpy as np
import torch
import torch.nn.functional as F

import mono_quant as mq
import mono_quant.kernels.int8 as kernels_int8
from common import background_load, interleaved, machine_info, summary, write_results
from mono_quant import _C

warnings.filterwarnings("ignore")

L3_BYTES = 32 << 20
SHAPES = [(768, 768), (768, 3072), (3072, 768), (4096, 4096), (11008, 4096), (4096, 11008)]


def load_build(path: str):
    """Another build of the extension, loaded beside the installed one under its own name."""
    spec = importlib.util.spec_from_file_location("mq_baseline._C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module.cpu_info()["active_isa"] != _C.cpu_info()["active_isa"]:
        raise SystemExit(f"the two builds run different levels: {module.cpu_info()['active_isa']} vs "
                         f"{_C.cpu_info()['active_isa']}")
    return module


def timed(contenders, repeats):
    times = interleaved(contenders, repeats=repeats, warmup=3, order="shuffle", clock=isa_cap.clock)
    return {name: summary(t) for name, t in times.items()}


def report(label, stats):
    base = stats["fp32"]["median_us"]
    line = f"{label:<26} fp32 {base:9.1f} us"
    for name in ("baseline", "this build"):
        line += f" | {name} {stats[name]['median_us']:8.1f} us x{base / stats[name]['median_us']:.2f}"
    print(line + f" | this/baseline speed x{stats['baseline']['median_us'] / stats['this build']['median_us']:.2f}",
          flush=True)
    return {"stats": stats, "ratios_vs_fp32": {k: base / v["median_us"] for k, v in stats.items()}}


def bench_weight_only(old, batches, threads, repeats, shapes=SHAPES):
    rows = []
    for n, k in shapes:
        copies = min(16, max(2, -(-3 * L3_BYTES // (2 * n * k))))
        floats, packs = [], []
        for c in range(copies):
            torch.manual_seed(c)
            w = torch.randn(n, k)
            qw = mq.quantize_weight(w, symmetric=True)
            packed, w_sum, m128 = _C.pack_int8(np.ascontiguousarray(qw.qdata.numpy()))
            floats.append(w)
            packs.append((packed, w_sum, qw.scale.float().numpy(), qw.zero_point.int().numpy(), m128))
        for m in batches:
            x = torch.randn(m, k)
            xn = x.numpy()

            def rotating(fn, items):
                state = {"i": 0}

                def call():
                    state["i"] = (state["i"] + 1) % copies
                    return fn(items[state["i"]])
                return call

            def kernel(module):
                own = [(p.copy(), s.copy(), sc.copy(), zp.copy(), m128) for p, s, sc, zp, m128 in packs]
                return rotating(lambda a: module.linear_int8(xn, a[0], a[1], a[2], a[3], None, n, a[4],
                                                             mode="weight_only", nthreads=threads), own)

            stats = timed({"fp32": rotating(lambda w: F.linear(x, w), floats), "baseline": kernel(old),
                           "this build": kernel(_C)}, repeats)
            rows.append(dict(report(f"{n}x{k} batch {m}", stats), shape=[n, k], batch=m, copies=copies))
    return rows


def report_dynamic(label, stats):
    """report()'s line with fbgemm's time beside the two builds (fbgemm time / ours)."""
    row = report(label, stats)
    fb = stats["fbgemm"]["median_us"]
    print(f"{'':<26} vs fbgemm: " + ", ".join(f"{name} x{fb / stats[name]['median_us']:.2f}" for name in stats
                                                 if name not in ("fp32", "fbgemm")), flush=True)
    row["ratios_vs_fbgemm"] = {k: fb / v["median_us"] for k, v in stats.items()}
    return row


def bench_dynamic(old, batches, threads, repeats, shapes=((4096, 4096),)):
    """Weights that fit L3 (compute-bound batches): one copy each, no rotation."""
    rows = []
    for n, k in shapes:
        torch.manual_seed(0)
        w = torch.randn(n, k)
        qw = mq.quantize_weight(w, symmetric=True)
        packed, w_sum, m128 = _C.pack_int8(np.ascontiguousarray(qw.qdata.numpy()))
        scale, zp = qw.scale.float().numpy(), qw.zero_point.int().numpy()
        tq = torch.quantize_per_channel(w, qw.scale.double(), torch.zeros(n, dtype=torch.long), 0, torch.qint8)
        fb_packed = torch.ops.quantized.linear_prepack(tq, None)
        for m in batches:
            x = torch.randn(m, k)
            xn = x.numpy()

            def kernel(module, reduce_range=False):
                own = (packed.copy(), w_sum.copy(), scale.copy(), zp.copy())
                return lambda: module.linear_int8(xn, own[0], own[1], own[2], own[3], None, n, m128,
                                                  mode="dynamic", nthreads=threads, reduce_range=reduce_range)

            stats = timed({"fp32": lambda: F.linear(x, w), "baseline": kernel(old), "this build": kernel(_C),
                           "baseline reduce_range": kernel(old, True), "this build reduce_range": kernel(_C, True),
                           "fbgemm": lambda: torch.ops.quantized.linear_dynamic(x, fb_packed, True)}, repeats)
            rows.append(dict(report_dynamic(f"dynamic {n}x{k} batch {m}", stats), shape=[n, k], batch=m))
    return rows


def bench_int4(old, batches, threads, repeats, shapes=SHAPES):
    from mono_quant.int4 import quantize_int4

    rows = []
    for n, k in shapes:
        copies = min(16, max(2, -(-3 * L3_BYTES // (2 * n * k))))
        floats, packs = [], []
        for c in range(copies):
            torch.manual_seed(c)
            w = torch.randn(n, k)
            qw, _ = quantize_int4(w, group_size=128)
            floats.append(w)
            packs.append((qw.qdata.numpy(), qw.scale.numpy(), qw.zero_point.numpy(), qw.group))
        for m in batches:
            x = torch.randn(m, k)
            xn = x.numpy()

            def rotating(fn, items):
                state = {"i": 0}

                def call():
                    state["i"] = (state["i"] + 1) % copies
                    return fn(items[state["i"]])
                return call

            def kernel(module):
                own = [(p.copy(), s.copy(), z.copy(), g) for p, s, z, g in packs]
                return rotating(lambda a: module.q4_linear(xn, a[0], a[1], a[2], a[3], int8_activations=-1,
                                                           nthreads=threads), own)

            stats = timed({"fp32": rotating(lambda w: F.linear(x, w), floats), "baseline": kernel(old),
                           "this build": kernel(_C)}, repeats)
            rows.append(dict(report(f"int4 {n}x{k} batch {m}", stats), shape=[n, k], batch=m, copies=copies))
    return rows


def bench_demo(old, batches, repeats, mode="dynamic"):
    """mode: "dynamic" / "weight-only" (int8) or "fp16"; the build swapped in the kernels module
    that format calls."""
    import mono_quant.kernels.fp16 as kernels_fp16
    from mono_quant.demo import TransformerLike, _seeded

    model = _seeded(TransformerLike(), 1).eval()
    if mode == "fp16":
        qmodel, swapped = mq.quantize(model, dtype="fp16").model, kernels_fp16
    else:
        qmodel = mq.quantize(model, activations="dynamic" if mode == "dynamic" else None).model
        swapped = kernels_int8
    rows = []
    for m in batches:
        x = torch.randn(m, 256)

        def with_build(module):
            def call():
                swapped._C = module
                try:
                    return qmodel(x)
                finally:
                    swapped._C = _C
            return call

        with torch.inference_mode():
            stats = timed({"fp32": lambda: model(x), "baseline": with_build(old), "this build": with_build(_C)},
                          repeats)
        label = f"demo {mode}" if mode == "fp16" else f"demo int8 {mode}"
        rows.append(dict(report(f"{label} batch {m}", stats), batch=m))
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["weight-only", "dynamic", "int4", "demo", "demo-weight-only", "demo-fp16"], nargs="?", default="weight-only")
    parser.add_argument("--baseline", required=True, help="path of the other build's _C extension file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--background-load", type=int, default=0, metavar="N")
    parser.add_argument("--shapes", default=None, help="weight-only: out x in list, e.g. 768x768,3072x768")
    isa_cap.add_isa_arguments(parser)
    args = parser.parse_args()
    isa_cap.apply_isa()
    isa_cap.check_clock(args.threads)
    torch.set_num_threads(args.threads)
    old = load_build(args.baseline)
    if isa_cap.ISA == "avx2-maddubs":  # apply_isa switched the installed build only
        old.use_maddubs_for_tests(True)
    info = machine_info()
    info["isa"] = isa_cap.isa_description()
    info["background_load"] = args.background_load
    print(f"{info['cpu']}, {info['cores']} cores, torch threads {args.threads}, ISA {info['dispatched_isa']}, "
          f"baseline {args.baseline}")
    with background_load(args.background_load):
        if args.what == "weight-only":
            shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
            rows = bench_weight_only(old, args.batches or [1], args.threads, args.repeats, shapes)
        elif args.what == "dynamic":
            shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else None
            rows = bench_dynamic(old, args.batches or [8, 32, 128], args.threads, args.repeats,
                                 shapes or ((4096, 4096),))
        elif args.what == "int4":
            shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
            rows = bench_int4(old, args.batches or [1], args.threads, args.repeats, shapes)
        else:
            rows = bench_demo(old, args.batches or [1, 32], args.repeats,
                              {"demo": "dynamic", "demo-weight-only": "weight-only", "demo-fp16": "fp16"}[args.what])
    path = write_results(f"bench_ab_{args.what}_t{args.threads}" + (f"_bg{args.background_load}"
                                                                   if args.background_load else ""),
                         {"machine": info, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
