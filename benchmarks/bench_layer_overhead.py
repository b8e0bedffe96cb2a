"""Per-call overhead of the quantized layers' Python forward on tiny inputs, where it
decides the whole model's speed (bench_models.py's small CNNs on 8x8 inputs): each layer
of the small CNN (int8 dynamic) on the input it gets in the model, and the whole model,
interleaved with the fp32 layer, 1 thread, under no_grad.

With ``--baseline DIR`` (DIR: another build's installed ``mono_quant`` package folder,
copied aside, e.g. main's ``.venv/lib/python3.11/site-packages/mono_quant``) the same
layers of that build run too, in the same process: a Python-layer before/after (the
copy is imported as ``mono_quant_base``, its torch.library namespace renamed so both
register).  bench_ab.py swaps only ``_C``.

With ``--in-model`` each layer is timed inside the whole model's forward instead (forward
hooks on the same layers of every contender, the models called in rotation): at batch 64 a
layer then starts with the caches the previous layers' activations went through, which
the layer alone, called in a loop, never sees.

Usage: python benchmarks/bench_layer_overhead.py [--baseline DIR] [--cases cnn16x8-b1,cnn32x8-b1]
           [--repeats N] [--calls N] [--clock cpu] [--in-model]
"""
from __future__ import annotations

import argparse
import copy
import importlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import mono_quant as mq
from bench_models import build_case
from common import interleaved, machine_info, write_results

LAYERS = ("conv1", "conv2", "conv3", "fc")


def import_baseline(folder: str):
    """The package at ``folder`` imported as ``mono_quant_base`` (a renamed copy)."""
    root = Path(tempfile.mkdtemp(prefix="mq_base_"))
    target = root / "mono_quant_base"
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.rglob("*.py"):
        text = path.read_text()
        renamed = re.sub(r"mono_quant::", "mono_quant_base::", text)
        renamed = re.sub(r"torch\.ops\.mono_quant\b", "torch.ops.mono_quant_base", renamed)
        renamed = renamed.replace('Library("mono_quant"', 'Library("mono_quant_base"')
        if renamed != text:
            path.write_text(renamed)
    sys.path.insert(0, str(root))
    return importlib.import_module("mono_quant_base")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="another build's installed mono_quant package folder")
    parser.add_argument("--cases", default="cnn16x8-b1,cnn32x8-b1,cnn16x8-b64,cnn32x8-b64")
    parser.add_argument("--repeats", type=int, default=21, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=200, help="calls per timed sample")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: the thread's CPU time (leaves out time other processes held the core)")
    parser.add_argument("--in-model", action="store_true", help="time each layer inside the whole model's forward")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    builds = {"after": mq}
    if args.baseline:
        builds = {"before": import_baseline(args.baseline), **builds}
    rows = []
    print(f"{'case':14s} {'layer':6s} {'fp32 us':>9s} " + " ".join(f"{b + ' +us':>10s} {b + ' x':>8s}" for b in builds))
    for case in args.cases.split(","):
        model, x = build_case(case)
        quantized = {b: pkg.quantize(copy.deepcopy(model), dtype="int8").model.eval() for b, pkg in builds.items()}
        outs = [q(x) for q in quantized.values()]
        assert all(torch.equal(outs[0], o) for o in outs[1:]), "the builds' results differ"
        if args.in_model:
            rows += in_model(case, x, {"fp32": model, **quantized}, args.repeats * args.calls // 10, args.clock)
            continue
        inputs = {}
        hooks = [getattr(model, n).register_forward_pre_hook(lambda m, a, n=n: inputs.__setitem__(n, a[0]))
                 for n in LAYERS]
        model(x)
        for h in hooks:
            h.remove()
        targets = [(n, inputs[n], {"fp32": getattr(model, n), **{b: getattr(q, n) for b, q in quantized.items()}})
                   for n in LAYERS]
        targets.append(("model", x, {"fp32": model, **quantized}))
        for name, xi, modules in targets:
            calls = args.calls if name != "model" else max(1, args.calls // 10)
            fns = {k: (lambda m=m: [m(xi) for _ in range(calls)]) for k, m in modules.items()}
            times = interleaved(fns, repeats=args.repeats, warmup=3, order="shuffle", clock=clock)
            fp32 = statistics.median(times["fp32"]) / calls * 1e6
            row = {"case": case, "layer": name, "input": list(xi.shape), "fp32_us": fp32}
            line = f"{case:14s} {name:6s} {fp32:9.2f} "
            for b in builds:
                med = statistics.median(times[b]) / calls * 1e6
                ratio = statistics.median(t / f for t, f in zip(times[b], times["fp32"]))
                row[f"{b}_us"], row[f"{b}_ratio"] = med, ratio
                line += f"{med - fp32:+10.2f} {ratio:8.2f} "
            rows.append(row)
            print(line, flush=True)
    name = "layer_overhead_in_model" if args.in_model else "layer_overhead"
    path = write_results(name, {"machine": machine_info(), "threads": 1, "clock": args.clock, "rows": rows})
    print(f"wrote {path}")


def in_model(case: str, x: torch.Tensor, models: dict, calls: int, clock: str) -> list:
    """Per-layer median times inside each model's forward (hooks on LAYERS), the models
    called in rotation ``calls`` times; printed beside fp32's, returned as rows."""
    now = time.thread_time_ns if clock == "cpu" else time.perf_counter_ns
    samples = {m: {n: [] for n in LAYERS} for m in models}
    for label, model in models.items():
        for n in LAYERS:
            layer, started = getattr(model, n), {}
            layer.register_forward_pre_hook(lambda mod, a, started=started: started.__setitem__(0, now()))
            layer.register_forward_hook(lambda mod, a, y, n=n, label=label, started=started:
                                        samples[label][n].append(now() - started[0]))
    labels = list(models)
    for _ in range(3):
        for model in models.values():
            model(x)
    for label in labels:
        for n in LAYERS:
            samples[label][n].clear()
    for r in range(max(1, calls)):
        for j in range(len(labels)):
            models[labels[(r + j) % len(labels)]](x)
    rows = []
    for n in LAYERS:
        fp32 = statistics.median(samples["fp32"][n]) / 1e3
        row = {"case": case, "layer": n, "in_model": True, "fp32_us": fp32}
        line = f"{case:14s} {n:6s} {fp32:9.2f} "
        for label in labels[1:]:
            med = statistics.median(samples[label][n]) / 1e3
            row[f"{label}_us"], row[f"{label}_ratio"] = med, med / fp32
            line += f"{med - fp32:+10.2f} {med / fp32:8.2f} "
        rows.append(row)
        print(line, flush=True)
    for model in models.values():  # (the hooks stay on these throwaway copies only)
        for n in LAYERS:
            getattr(model, n)._forward_hooks.clear()
            getattr(model, n)._forward_pre_hooks.clear()
    return rows


if __name__ == "__main__":
    main()
