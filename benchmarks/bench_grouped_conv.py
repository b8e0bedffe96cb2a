"""Grouped convs of narrow groups: the direct kernel (direct_conv.grouped_max_outputs) against torch's conv.

Layers: 3x3 grouped convs of group width 4, 8 and 16 (RegNet's 8, ResNeXt's 4), including RegNet-Y 400MF's at
128x128, fp32 `nn.Conv2d` against int8 weight-only and int4 with the grouped rule on ("new") and off ("old":
the rule's tables emptied, as before session 60), in one process, round by round (the rule is switched
between blocks of calls: each switch makes the layers' routes again, in an untimed call).  Models (``--models``, needs
torchvision): whole torchvision classifiers at batch 1, the same A/B.  fp32's time over each (above 1:
faster than fp32).  ``--load N`` runs N busy processes beside it.  ``--candidate WIDE,NARROW`` tries those
limits at the active kernel level as the new rule (a level the shipped tables leave out: AVX-512).

    python benchmarks/bench_grouped_conv.py [--threads 1] [--load 0] [--repeats 15] [--models regnet_y_400mf]
                                            [--candidate 65536,262144]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import background_load, machine_info, write_results  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant.kernels import direct_conv  # noqa: E402

# (channels, group width, image side, batch): RegNet-Y 400MF's stages at 128x128, then a scan
LAYERS = ((48, 8, 32, 1), (104, 8, 16, 1), (208, 8, 8, 1), (440, 8, 4, 1), (208, 8, 8, 8), (440, 8, 4, 8),
          (128, 4, 8, 8), (512, 4, 8, 1), (32, 8, 32, 1), (128, 8, 32, 1), (128, 16, 8, 8), (128, 16, 32, 1))
_SHIPPED = {name: getattr(direct_conv, name) for name in ("GROUPED_MAX_OUTPUTS", "GROUPED_NARROW_MAX_OUTPUTS")}


_NEW = dict(_SHIPPED)  # the "new" rule: the shipped tables, or --candidate's limits at the active level


def _set_rule(on: bool) -> None:
    """The grouped rule as shipped or as --candidate sets it (on), or without it (empty tables): new table
    objects, which the layers' kept routes are stamped with, so each layer makes its route again on its
    next call."""
    for name, table in _NEW.items():
        setattr(direct_conv, name, table if on else {})


def _ratios(float_model, quantized: dict, x, repeats: int, calls: int = 5) -> dict:
    """fp32's time over each variant's, medians of ``repeats`` rounds; a round times ``calls`` calls of fp32,
    then of each quantized model under the old rule and under the new one (rotating the order), after
    one untimed call that makes the route of that rule."""
    variants = [("fp32", float_model, None)] + [(f"{name} {rule}", q, rule == "new") for name, q in
                                                quantized.items() for rule in ("old", "new")]
    times = {name: [] for name, _, _ in variants}
    for r in range(repeats + 1):  # (round 0: warm-up)
        for name, model, on in variants[r % len(variants):] + variants[:r % len(variants)]:
            if on is not None:
                _set_rule(on)
            model(x)
            t0 = time.perf_counter()
            for _ in range(calls):
                model(x)
            if r:
                times[name].append((time.perf_counter() - t0) / calls)
    for name, table in _SHIPPED.items():  # (as shipped again, whatever --candidate tried)
        setattr(direct_conv, name, table)
    fp32 = statistics.median(times["fp32"])
    return {name: fp32 / statistics.median(t) for name, t in times.items() if name != "fp32"}


def _quantized(model) -> dict:
    return {"int8 weight-only": mq.quantize(model, "int8", activations=None).model,
            "int4": mq.quantize(model, "int4").model}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--load", type=int, default=0, help="busy processes beside the benchmark")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--models", nargs="*", default=[], help="torchvision classifiers at 128x128, batch 1")
    ap.add_argument("--candidate", metavar="WIDE,NARROW",
                    help="limits to try as the new rule at the active kernel level (GROUPED_MAX_OUTPUTS, "
                         "GROUPED_NARROW_MAX_OUTPUTS), e.g. 65536,262144 on an AVX-512 host")
    args = ap.parse_args()
    if args.candidate:
        isa = mq.cpu_info()["active_isa"]
        for name, limit in zip(_SHIPPED, (int(v) for v in args.candidate.split(","))):
            _NEW[name] = {**_SHIPPED[name], isa: limit}
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {"layers": [], "models": []}
    with background_load(args.load) if args.load else contextlib.nullcontext(), torch.inference_mode():
        for channels, width, side, batch in LAYERS:
            conv = torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 3, padding=1, groups=channels // width))
            x = torch.randn(batch, channels, side, side)
            r = _ratios(conv.eval(), _quantized(conv.eval()), x, args.repeats)
            results["layers"].append({"channels": channels, "group_width": width, "side": side, "batch": batch, **r})
            print(f"{channels:4d} ch, groups of {width:2d}, {side}x{side}, batch {batch}: "
                  + "  ".join(f"{a} {v:.2f}x" for a, v in r.items()), flush=True)
        for name in args.models:
            from torchvision import models  # (a benchmark-only dependency)
            model = models.get_model(name, weights=None).eval()
            r = _ratios(model, _quantized(model), torch.randn(1, 3, 128, 128), args.repeats)
            results["models"].append({"model": name, **r})
            print(f"{name} 128x128 batch 1: " + "  ".join(f"{a} {v:.2f}x" for a, v in r.items()), flush=True)
    path = write_results("grouped_conv", {"machine": machine_info(), "threads": args.threads, "load": args.load,
                                          "candidate": args.candidate,
                                          "results": results})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
