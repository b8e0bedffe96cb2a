"""Dynamic int8 Conv2d on small CNNs (issue 9, point 4b): ``mq.quantize(model, dtype="int8")``
(dynamic activations) against fp32 eager, interleaved in one process, at each thread count.

Models (random weights: speed only): the Fashion-MNIST ResNet8 of benchmarks/static/resnet8.py
(1x28x28 inputs) and the small CNNs of bench_models.py (``cnn<channels>x<size>``, its own
builder).  Contenders, timed in rotation after a warm-up (median, p10/p90 per call):
  fp32           the float model, eager
  int8 dyn       the quantized model as it runs by default
  int8 im2col    the same model with the direct conv route switched off
                 (``kernels.dynamic_conv.set_direct(False)``): the routes before it (im2col + GEMM,
                 and F.conv2d on the dequantized weight below the im2col route's size floor),
                 timed in a second interleaved pass against fp32 (the switch is not flipped per call)
  int8 old stem  with --old-stem: the quantized model with the route rule before the direct route
                 took every channel count (30 Nov, branch stemconv): convs with a reduction under 64
                 (a stem's 1 or 3 channels, a 1x1 shortcut of 16) or under the old size floors run
                 F.conv2d on the dequantized weight; timed in the first pass (before vs after)
  ORT int8 dyn   with --ort run: ONNX Runtime's int8 dynamic model (bench_models.ort_sessions)
With --ort alive the ORT session is made and run once but not timed: its thread pool lives in
the process beside torch's (the case that made our dynamic convs slow in bench_static.py).

--profile: per quantized conv layer, the C steps of ``_C.conv2d_int8`` (kernels.dynamic_conv.
profile: wall time of each parallel region, and for the direct route the per-step time summed
over threads) and the layer's whole forward as Python sees it, on both routes.

--background-load N: N CPU-bound processes (a busy loop each, common.background_load) run beside
the whole timed run (issue 9's "steady under load" mode: 2 on a 2-core host).

Usage: python benchmarks/bench_dynamic_conv.py [--cases resnet8-b64,cnn32x8-b1,...] [--threads 1,2]
           [--ort none|alive|run] [--budget S] [--profile] [--isa avx2 --torch-isa avx2]
           [--background-load N] [--tag T]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "static"))
import isa_cap  # noqa: F401,E402  (before torch: --isa / --torch-isa set the environment)
import torch  # noqa: E402
from torch import nn  # noqa: E402

import mono_quant as mq  # noqa: E402
from bench_models import build_case, ort_sessions  # noqa: E402  (the small CNNs, ORT's int8 model)
from common import background_load, interleaved, machine_info, summary, write_results  # noqa: E402
from mono_quant.kernels import dynamic_conv  # noqa: E402
from mono_quant.modules.conv import QuantizedConv2d  # noqa: E402
from resnet8 import ResNet8  # noqa: E402

warnings.filterwarnings("ignore")

DEFAULT_CASES = ["resnet8-b1", "resnet8-b64", "cnn16x8-b1", "cnn16x8-b64", "cnn32x8-b1", "cnn32x8-b64",
                 "cnn64x16-b1", "cnn64x16-b64", "cnn32x32-b1", "cnn32x32-b64"]


def make_case(name: str):
    """``resnet8-b<batch>`` or bench_models' ``cnn<channels>x<size>-b<batch>``: (model, x)."""
    if name.startswith("resnet8"):
        torch.manual_seed(0)
        batch = int(name.split("-b")[1])
        return ResNet8().eval(), torch.randn(batch, 1, 28, 28)
    return build_case(name)


class im2col_route:
    """The direct route switched off for the block (the im2col route every call)."""

    def __enter__(self):
        self.previous = dynamic_conv.set_direct(False)

    def __exit__(self, *exc):
        dynamic_conv.set_direct(self.previous)


OLD_DIRECT_MIN_MACS_PER_IMAGE = 1 << 15  # modules/conv.py's direct-route floor before branch stemconv


def old_stem_model(qmodel: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of ``qmodel`` whose dynamic convs follow the route rule from before the direct route
    took any channel count: F.conv2d on the dequantized weight where the reduction is under
    DYNAMIC_MIN_K or an image's multiply-adds under the floor (the direct one only for channels a
    multiple of 4).  The shapes are found by one forward of ``x``."""
    from mono_quant.modules import conv as conv_module

    shapes = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: shapes.__setitem__(name, args[0].shape))
             for name, m in qmodel.named_modules() if isinstance(m, QuantizedConv2d)]
    with torch.no_grad():
        qmodel(x)
    for h in hooks:
        h.remove()
    old = copy.deepcopy(qmodel)  # (after the forward: the copy's layers have no kept route yet)
    for name, shape in shapes.items():
        m = old.get_submodule(name)
        k = m.in_channels // m.groups * m.kernel_size2d[0] * m.kernel_size2d[1]
        pixels = 1
        for size, kk, st, p, d in zip(shape[2:], m.kernel_size2d, m.stride2d, m.padding2d, m.dilation2d):
            pixels *= (size + 2 * p - d * (kk - 1) - 1) // st + 1
        direct = m.in_channels % 4 == 0 and dynamic_conv.direct_applies(
            m.in_channels, m.groups, m.kernel_size2d, m.padding2d, m.dilation2d, not m.weight_symmetric)
        floor = OLD_DIRECT_MIN_MACS_PER_IMAGE if direct else conv_module.DYNAMIC_MIN_MACS_PER_IMAGE
        if m.activations == "dynamic" and (k < conv_module.DYNAMIC_MIN_K or pixels * k * m.out_channels < floor):
            m._packed_pays = lambda x: False  # the float route (kept per module by its route cache)
    return old


def profile_layers(qmodel: nn.Module, x: torch.Tensor, calls: int) -> list:
    """Per quantized conv: mean µs per forward of each C step and of the layer's whole forward."""
    layers = [(name, m) for name, m in qmodel.named_modules() if isinstance(m, QuantizedConv2d)]
    found = {name: {"forward_ns": 0, "steps": {}} for name, _ in layers}
    started = {}

    def pre(name):
        def hook(module, args):
            dynamic_conv.profile()  # zero the sums
            started[name] = time.perf_counter_ns()
        return hook

    def post(name):
        def hook(module, args, out):
            elapsed = time.perf_counter_ns() - started[name]
            steps = dynamic_conv.profile()
            found[name]["forward_ns"] += elapsed
            for key, ns in steps.items():
                found[name]["steps"][key] = found[name]["steps"].get(key, 0) + ns
        return hook

    handles = [h for name, m in layers for h in (m.register_forward_pre_hook(pre(name)),
                                                 m.register_forward_hook(post(name)))]
    dynamic_conv.profile(True)
    try:
        with torch.no_grad():
            qmodel(x)  # warm-up
            for entry in found.values():
                entry["forward_ns"], entry["steps"] = 0, {}
            for _ in range(calls):
                qmodel(x)
    finally:
        dynamic_conv.profile(False)
        for h in handles:
            h.remove()
    rows = []
    for name, m in layers:
        entry = found[name]
        steps = {k: v / calls / 1e3 for k, v in entry["steps"].items() if not k.endswith("calls")}
        rows.append({"layer": name, "shape": f"{m.in_channels}->{m.out_channels} k{m.kernel_size2d[0]} "
                                              f"s{m.stride2d[0]}", "c_calls": entry["steps"].get("calls", 0) / calls,
                     "forward_us": entry["forward_ns"] / calls / 1e3, "steps_us": steps})
    return rows


def print_profile(case, threads, route, rows):
    print(f"\n  profile {case}, {threads} thread(s), {route} route (µs per forward; 'thr_' = summed over threads)")
    print(f"  {'layer':<18} {'shape':<16} {'fwd':>7} {'C':>7} {'quant':>6} {'im2col':>6} {'gemm':>6} {'nchw':>6} "
          f"{'preq':>5} {'direct':>6} {'thr_q':>6} {'thr_cv':>6} {'thr_ep':>6}")
    for r in rows:
        s = r["steps_us"]
        if not r["c_calls"]:
            print(f"  {r['layer']:<18} {r['shape']:<16} {r['forward_us']:7.1f}  (float route: F.conv2d)")
            continue
        print(f"  {r['layer']:<18} {r['shape']:<16} {r['forward_us']:7.1f} {s['total']:7.1f} {s['quantize']:6.1f} "
              f"{s['im2col']:6.1f} {s['gemm']:6.1f} {s['nchw']:6.1f} {s['prequantize']:5.1f} {s['direct']:6.1f} "
              f"{s['thread_quantize']:6.1f} {s['thread_conv']:6.1f} {s['thread_epilogue']:6.1f}")


def run_case(name, threads, ort_mode, budget_s, profile_calls, old_stem=False, im2col_pass=True):
    model, x = make_case(name)
    qmodel = mq.quantize(model, dtype="int8").model.eval()
    old = old_stem_model(qmodel, x) if old_stem else None
    sessions = {}
    if ort_mode != "none":
        with tempfile.TemporaryDirectory() as workdir:
            sessions = ort_sessions(model, x, threads, workdir)
        if not sessions:
            print("  (onnxruntime not installed: no ORT session)")
    x_np = x.numpy()
    rows = []
    with torch.no_grad():
        for n in threads:
            torch.set_num_threads(n)
            for session in sessions.values():
                session.run(None, {"x": x_np})  # its thread pool started, alive beside torch's
            stats = {}
            # two interleaved passes, each against fp32 in the same pass: the route switch is not
            # flipped per call (a layer's kept route is stamped with it and would be rebuilt)
            for route in ("direct", "im2col") if im2col_pass else ("direct",):
                label = "int8 dyn" if route == "direct" else "int8 im2col"
                contenders = {"fp32": lambda: model(x), label: lambda: qmodel(x)}
                if route == "direct" and old is not None:
                    contenders["int8 old stem"] = lambda: old(x)
                if route == "direct" and ort_mode == "run" and n in sessions:
                    contenders["ORT int8 dyn"] = lambda s=sessions[n]: s.run(None, {"x": x_np})
                previous = dynamic_conv.set_direct(route == "direct")
                try:
                    t0 = time.perf_counter()
                    for fn in contenders.values():
                        fn()
                    round_s = time.perf_counter() - t0
                    repeats = int(min(max(budget_s / 2 / max(round_s, 1e-6), 7), 400))
                    times = interleaved(contenders, repeats, warmup=3, clock=isa_cap.clock)
                finally:
                    dynamic_conv.set_direct(previous)
                pass_stats = {key: summary(samples) for key, samples in times.items()}
                base = pass_stats["fp32"]["median_us"]
                for entry in pass_stats.values():
                    entry["ratio_vs_fp32"] = entry["median_us"] / base
                stats[label] = pass_stats.pop(label)
                suffix = "" if route == "direct" else " (im2col pass)"
                stats.update({key + suffix: entry for key, entry in pass_stats.items()})
            row = {"case": name, "threads": n, "ort": ort_mode, "repeats": repeats, "contenders": stats}
            print_row(row)
            if profile_calls:
                row["profile"] = {"direct": profile_layers(qmodel, x, profile_calls)}
                with im2col_route():
                    row["profile"]["im2col"] = profile_layers(qmodel, x, profile_calls)
                for route, prows in row["profile"].items():
                    print_profile(name, n, route, prows)
            rows.append(row)
    return rows


def print_header():
    print(f"{'case':<13} {'thr':>3} {'ort':<5} {'fp32 us':>9} {'int8 dyn us':>11} {'x fp32':>6} "
          f"{'im2col x fp32':>13} {'ORT x fp32':>10} {'old stem us':>11} {'x fp32':>6}")


def print_row(row):
    c = row["contenders"]
    ort, old = c.get("ORT int8 dyn"), c.get("int8 old stem")
    print(f"{row['case']:<13} {row['threads']:>3} {row['ort']:<5} {c['fp32']['median_us']:9.1f} "
          f"{c['int8 dyn']['median_us']:11.1f} {c['int8 dyn']['ratio_vs_fp32']:6.2f} "
          f"{c['int8 im2col']['ratio_vs_fp32'] if 'int8 im2col' in c else float('nan'):13.2f} {'' if ort is None else format(ort['ratio_vs_fp32'], '.2f'):>10}"
          + ("" if old is None else f" {old['median_us']:11.1f} {old['ratio_vs_fp32']:6.2f}"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--ort", choices=["none", "alive", "run"], default="none",
                        help="alive: an ORT session made and run once, left in the process; run: also timed")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per case and thread count")
    parser.add_argument("--profile", type=int, default=0, metavar="CALLS",
                        help="per-layer C step profile over CALLS forwards, both routes")
    parser.add_argument("--background-load", type=int, default=0, metavar="N",
                        help="N busy processes beside the timed run (the steady-under-load mode)")
    parser.add_argument("--old-stem", action="store_true",
                        help="also time the model with the route rule from before branch stemconv (int8 old stem)")
    parser.add_argument("--no-im2col", action="store_true", help="skip the second pass (the im2col route)")
    parser.add_argument("--tag", default="")
    isa_cap.add_isa_arguments(parser)
    args = parser.parse_args()
    isa_cap.apply_isa()
    threads = [int(t) for t in args.threads.split(",")]
    info = machine_info()
    info["isa"] = isa_cap.isa_description()
    info["threading_backend"] = mq.kernels.SETTINGS.threading_backend
    info["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY")
    info["background_load"] = args.background_load
    print(f"{info['cpu']}, {info['cores']} cores, mono-quant {info['isa']['active_isa']} "
          f"({info['isa']['qgemm']}), torch isa {info['isa']['torch_isa_option']}, ort={args.ort}, "
          f"background load {args.background_load} processes")
    print("time ratios are contender / fp32 in the same interleaved pass (lower is faster)")
    print_header()
    rows = []
    with background_load(args.background_load):
        for case in args.cases.split(","):
            rows.extend(run_case(case, threads, args.ort, args.budget, args.profile, args.old_stem,
                                 not args.no_im2col))
    path = write_results("bench_dynamic_conv" + (f"_{args.tag}" if args.tag else ""), {"machine": info, "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
