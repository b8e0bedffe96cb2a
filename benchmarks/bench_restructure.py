"""The package before and after the issue-10 restructure (per-format objects, kernels/),
timed interleaved in one run: the change must cost nothing measurable.

Two worker processes, one importing the old package (a built copy of commit 5149257 on
PYTHONPATH, ``--old``), one the installed package; each builds the same models and, on
request, times a batch of calls with its own clock.  The calls are interleaved with
common.interleaved() (rotating order): its clock here is the sum of the workers' own
timings, so the pipe between the processes is not in the figures.

Cases: quantize() of a BERT-base-like encoder (2 layers, hidden 768, FFN 3072, int8),
int8 / int4 ``Linear(768, 768)`` forward at batch 1 and 32 (one torch thread), and an int8
``Linear(16, 16)`` at batch 1, where the Python dispatch is most of the call.
Prints old / new medians and their ratio; writes results/bench_restructure.json.

Usage: python benchmarks/bench_restructure.py --old /path/to/old/site [--repeats N]
where the old package is built with, e.g.:
    git archive 5149257 | tar -x -C /tmp/mq-old
    .venv/bin/pip install --no-deps --no-build-isolation --target /tmp/mq-old-site /tmp/mq-old
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import interleaved, machine_info, summary, write_results

# calls per timed sample: about 1-20 ms of work each
CASES = {"quantize_bert_int8": 1, "int8_b1": 400, "int8_b32": 100, "int4_b1": 400, "int4_b32": 50,
         "int8_16x16_b1": 2000}

WORKER = r"""
import json, sys, time, warnings
import torch
from torch import nn
import mono_quant as mq
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
torch.manual_seed(0)

def block():
    return nn.ModuleDict({n: nn.Linear(768, 768) for n in ("q", "k", "v", "o")} |
                         {"ff1": nn.Linear(768, 3072), "ff2": nn.Linear(3072, 768)})

bert = nn.Sequential(nn.Embedding(30522, 768), *[block() for _ in range(2)])
lin = nn.Linear(768, 768)
q8 = mq.quantize(lin, dtype="int8").model
q4 = mq.quantize(lin, dtype="int4").model
tiny = mq.quantize(nn.Linear(16, 16), dtype="int8", min_weight_numel=1).model
xs = {1: torch.randn(1, 768), 32: torch.randn(32, 768)}
runs = {
    "quantize_bert_int8": lambda: mq.quantize(bert, dtype="int8"),
    "int8_b1": lambda: q8(xs[1]), "int8_b32": lambda: q8(xs[32]),
    "int4_b1": lambda: q4(xs[1]), "int4_b32": lambda: q4(xs[32]),
    "int8_16x16_b1": lambda: tiny(xs[1][:, :16]),
}
print(json.dumps({"ready": mq.__file__}), flush=True)
with torch.inference_mode():
    for line in sys.stdin:
        case, n = line.split()
        fn = runs[case]
        t0 = time.perf_counter()
        for _ in range(int(n)):
            fn()
        print(json.dumps({"seconds": (time.perf_counter() - t0) / int(n)}), flush=True)
"""


class Worker:
    """One process importing one version of the package, timing calls on request."""

    def __init__(self, pythonpath: str = ""):
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        else:
            env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True, cwd="/")
        self.where = json.loads(self.proc.stdout.readline())["ready"]

    def time(self, case: str, calls: int) -> float:
        self.proc.stdin.write(f"{case} {calls}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="a directory holding the old mono_quant package (built)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    workers = {"old": Worker(args.old), "new": Worker()}
    if workers["old"].where == workers["new"].where:
        raise SystemExit(f"both workers import {workers['old'].where}: --old must hold another copy")
    elapsed = [0.0]  # the workers' own timings, summed: interleaved()'s clock

    def contender(name: str, case: str):
        def run():
            elapsed[0] += workers[name].time(case, CASES[case])
        return run

    results = {}
    print(f"old: {workers['old'].where}\nnew: {workers['new'].where}")
    print(f"{'case':<20} {'old us':>10} {'new us':>10} {'new/old':>8}  (p10-p90 new/old)")
    for case in CASES:
        times = interleaved({n: contender(n, case) for n in workers}, repeats=args.repeats, warmup=2,
                            clock=lambda: elapsed[0])
        old, new = summary(times["old"]), summary(times["new"])
        ratios = sorted(b / a for a, b in zip(times["old"], times["new"]))
        results[case] = {"old": old, "new": new, "ratio_median": new["median_us"] / old["median_us"],
                         "ratio_p10": ratios[len(ratios) // 10], "ratio_p90": ratios[-1 - len(ratios) // 10]}
        r = results[case]
        print(f"{case:<20} {old['median_us']:>10.1f} {new['median_us']:>10.1f} {r['ratio_median']:>8.3f}  "
              f"({r['ratio_p10']:.3f}-{r['ratio_p90']:.3f})")
    for w in workers.values():
        w.close()
    path = write_results("bench_restructure", {"machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M"),
                                               "repeats": args.repeats, "calls_per_sample": CASES,
                                               "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
