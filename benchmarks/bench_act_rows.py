"""The dynamic int8 Linear's activation quantization (act_rows), this build against
another one (``--base``: a site folder holding an older mono_quant, e.g. one built
with ``pip install --target``), interleaved: two worker processes, one per build,
take turns, each timing its contenders interleaved within a round.  1 thread.

Cases: rows x K -> N dynamic int8 Linears (8-bit and reduce_range 7-bit activations)
and fbgemm's dynamic Linear beside them (the same in both builds: a yardstick for the
noise between the two processes); K -> 1 Linears, where the activation quantization
is nearly all the work (the quantizer's cost with the call around it); and, in builds
that have it, the quantizer alone (``_C.quantize_activations``, GB/s of fp32 input,
the Python call included) beside ``quantize_rows_fused`` (min/max, qparams and codes
per row through the dispatch table: the old quantizer's passes, in both builds).

Usage: python benchmarks/bench_act_rows.py --base /tmp/base_site [--isa avx2-maddubs --torch-isa avx2]
       [--rounds 12] [--shapes 128x384x384,128x768x768]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(shapes, repeats):
    sys.path.insert(0, HERE)
    import isa_cap  # noqa: F401  (before torch)
    import torch
    from torch import nn

    import mono_quant as mq
    from common import interleaved
    from mono_quant import _C

    isa_cap.apply_isa()
    torch.set_num_threads(1)
    cases = {}
    for m, k, n in shapes:
        torch.manual_seed(k + n)
        x = torch.randn(m, k) * 2 + 0.3
        for nn_out in (n, 1):
            lin = nn.Linear(k, nn_out).eval()
            dyn = mq.quantize(lin, activations="dynamic").model
            dyn7 = mq.quantize(lin, activations="dynamic").model
            dyn7.set_reduce_range(True)
            tq = torch.quantize_per_channel(lin.weight.detach(), dyn.weight_scale.double(),
                                            dyn.weight_zero_point.long(), 0, torch.qint8)
            fb = torch.ops.quantized.linear_prepack(tq, lin.bias.detach())
            c = {"mq int8": (lambda d=dyn, x=x: d(x)), "mq reduce_range": (lambda d=dyn7, x=x: d(x))}
            if nn_out > 1:
                c["fbgemm"] = lambda fb=fb, x=x: torch.ops.quantized.linear_dynamic(x, fb, True)
            cases[f"{m}x{k}->{nn_out}"] = c
        xn = x.numpy()
        # the per-row min/max + qparams + codes passes of quantize_rows_fused: the old
        # activation quantizer's composition less its sum and encoding loops (both builds)
        cases[f"{m}x{k} quantizer"] = {"rows_fused int8": lambda xn=xn: _C.quantize_rows_fused(xn, -127, 127, True)}
        if hasattr(_C, "quantize_activations"):
            cases[f"{m}x{k} quantizer"] |= {"act int8": lambda xn=xn: _C.quantize_activations(xn, False, 0),
                                           "act reduce_range": lambda xn=xn: _C.quantize_activations(xn, True, 2)}
    print(json.dumps(list(cases)), flush=True)
    for line in sys.stdin:
        name = line.strip()
        times = interleaved(cases[name], repeats=repeats, warmup=2)
        print(json.dumps(times), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="site folder of the build to compare against")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--shapes", default="128x384x384,128x768x768")
    ap.add_argument("--isa", default="native")
    ap.add_argument("--torch-isa", default="native")
    ap.add_argument("--worker", action="store_true")
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.worker:
        return worker(shapes, args.repeats)
    cmd = [sys.executable, __file__, "--worker", "--base", args.base, "--shapes", args.shapes, "--repeats",
           str(args.repeats), "--isa", args.isa, "--torch-isa", args.torch_isa]
    env_base = dict(os.environ, PYTHONPATH=args.base)
    procs = {"base": subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env_base,
                                      cwd="/"),
             "new": subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")}
    names = {b: json.loads(p.stdout.readline()) for b, p in procs.items()}
    times = {}
    for r in range(args.rounds):
        for b in (("base", "new") if r % 2 == 0 else ("new", "base")):
            for case in names[b]:
                procs[b].stdin.write(case + "\n")
                procs[b].stdin.flush()
                for c, t in json.loads(procs[b].stdout.readline()).items():
                    times.setdefault((case, c, b), []).extend(t)
    for p in procs.values():
        p.stdin.close()
        p.wait()
    med = {key: statistics.median(v) * 1e6 for key, v in times.items()}
    print(f"isa={args.isa} torch-isa={args.torch_isa}, 1 thread, medians (us), {args.rounds} rounds")
    rows = []
    for case in names["new"]:
        for c in sorted({k[1] for k in med if k[0] == case}):
            b, nw = med.get((case, c, "base")), med[(case, c, "new")]
            row = {"case": case, "contender": c, "base_us": b, "new_us": nw}
            line = f"  {case:22s} {c:18s} new {nw:8.1f}"
            if b is not None:
                line += f"  base {b:8.1f}  new/base {nw / b:5.2f}"
            fb = (case, "fbgemm", "new")
            if fb in med and c != "fbgemm":
                row["vs_fbgemm_new"] = med[fb] / nw
                line += f"  x{med[fb] / nw:.2f} fbgemm"
                if b is not None:
                    row["vs_fbgemm_base"] = med[(case, "fbgemm", "base")] / b
                    line += f" (base x{row['vs_fbgemm_base']:.2f})"
            if "quantizer" in case:
                m, k = (int(v) for v in case.split()[0].split("x"))
                row["gb_per_s"] = m * k * 4 / nw / 1e3
                line += f"  {row['gb_per_s']:.1f} GB/s"
            print(line)
            rows.append(row)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", f"act_rows_{args.isa}.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
