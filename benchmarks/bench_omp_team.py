"""Threading backends A/B in one process: dynamic int8 Linear on the
"omp-team" backend (our helpers, with jobs of 1 ms or more on torch's OpenMP
team when torch's libgomp is loaded; csrc/omp_team.c) against "pool" (our
helpers only, the default), interleaved in a fresh
random order each round with fp32 F.linear and fbgemm's dynamic linear (which
run on torch's OpenMP team, so its worker spins between calls as it does
between a model's torch ops).  8-bit and reduce_range (7-bit) activations.

Prints median us [p10-p90], each contender's speed against fp32 and fbgemm,
omp-team / pool, and how many of the "omp-team" contender's parallel jobs ran
on torch's team.  Run it once under torch's default OpenMP wait policy and
once with OMP_WAIT_POLICY=PASSIVE; --background-load N adds N busy processes.

Usage: python benchmarks/bench_omp_team.py [--threads 2] [--shapes 4096x4096 768x768]
           [--batches 1 32 128] [--repeats 15] [--background-load N]
           [--isa avx2-maddubs --torch-isa avx2]
"""
from __future__ import annotations

import argparse
import os
import warnings

import isa_cap  # noqa: F401  (before torch: --isa / --torch-isa set the environment)
import torch
import torch.nn.functional as F

import common
from bench_linear import L3_BYTES, Rotation, build_case, probe_fbgemm
from common import background_load, machine_info, summary, write_results
from mono_quant import _C

warnings.filterwarnings("ignore")


def on_backend(name, module, x):
    previous = _C.set_threading_backend(name)
    try:
        return module(x)
    finally:
        _C.set_threading_backend(previous)


def team_calls() -> int:
    return _C.linear_kernels()["omp_team_calls"]


def bench_case(n, k, batches, repeats, fbgemm, rows):
    int8_bytes = n * k
    copies = min(16, max(2, -(-3 * L3_BYTES // (2 * int8_bytes))) if int8_bytes < L3_BYTES else 2)
    floats, dyn, _, fb, _, dyn7 = build_case(n, k, copies, fbgemm, False)
    for m in batches:
        x = torch.randn(m, k)
        rot = {name: Rotation(list(range(copies))) for name in ("fp32", "fb", "p", "o", "p7", "o7")}
        team_before = [0]

        def on_team(mods, key):
            def call():
                before = team_calls()
                on_backend("omp-team", mods[rot[key].next()], x)
                team_before[0] += team_calls() - before
            return call

        contenders = {
            "fp32 F.linear": lambda: F.linear(x, floats[rot["fp32"].next()].weight),
            "omp-team 8-bit": on_team(dyn, "p"),
            "pool 8-bit": lambda: on_backend("pool", dyn[rot["o"].next()], x),
        }
        if m >= 8:
            contenders["omp-team reduce_range"] = on_team(dyn7, "p7")
            contenders["pool reduce_range"] = lambda: on_backend("pool", dyn7[rot["o7"].next()], x)
        if fb:
            contenders["fbgemm"] = lambda: torch.ops.quantized.linear_dynamic(x, fb[rot["fb"].next()], True)
        with torch.no_grad():
            times = common.interleaved(contenders, repeats, warmup=3, order="shuffle", clock=isa_cap.clock)
        stats = {name: summary(t) for name, t in times.items()}
        fp32 = stats["fp32 F.linear"]["median_us"]
        base = stats.get("fbgemm", stats["fp32 F.linear"])["median_us"]
        pool_calls = (repeats + 3) * (2 if m >= 8 else 1)
        print(f"\n{n}x{k} batch {m}: jobs on torch's team {team_before[0]} in {pool_calls} omp-team calls")
        for name, st in stats.items():
            us = st["median_us"]
            print(f"  {name:<22} {us:9.1f} us [{st['p10_us']:8.1f} - {st['p90_us']:8.1f}]  x{fp32 / us:5.2f} fp32"
                  + (f"  x{base / us:5.2f} fbgemm" if fb else ""))
        row = {"shape": [n, k], "batch": m, "stats": stats, "team_jobs": team_before[0], "pool_calls": pool_calls}
        for bits in ("8-bit", "reduce_range"):
            if f"omp-team {bits}" in stats:
                ratio = stats[f"pool {bits}"]["median_us"] / stats[f"omp-team {bits}"]["median_us"]
                row[f"team_speedup_{bits}"] = ratio
                print(f"  omp-team vs pool, {bits}: x{ratio:.2f}")
        rows.append(row)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=["4096x4096"], help="out x in")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--background-load", type=int, default=0, metavar="N")
    parser.add_argument("--tag", default="")
    isa_cap.add_isa_arguments(parser)
    args = parser.parse_args()
    isa_cap.apply_isa()
    torch.set_num_threads(args.threads)
    info = machine_info()
    info["isa"] = isa_cap.isa_description()
    info["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY")
    info["background_load"] = args.background_load
    fbgemm = probe_fbgemm()
    print(f"{info['cpu']}, {info['cores']} cores, torch threads {args.threads}, kernels {info['isa']['qgemm']}, "
          f"OMP_WAIT_POLICY={info['OMP_WAIT_POLICY']}, background load {args.background_load}")
    rows = []
    with background_load(args.background_load):
        for shape in args.shapes:
            n, k = (int(v) for v in shape.split("x"))
            bench_case(n, k, args.batches, args.repeats, fbgemm, rows)
    path = write_results("bench_omp_team" + (f"_{args.tag}" if args.tag else ""), {"machine": info, "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
