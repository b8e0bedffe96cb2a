"""Quantization speed and quantize()'s overhead and peak memory.

1. quantize_weight int8 (per channel) on 4096x4096 and 11008x4096, fp32 and
   bf16 input, against a clone of the same tensor (the memory-bandwidth floor)
   and the pure-torch path (aminmax per row + scale/zero-point +
   torch.quantize_per_channel).  Targets: <= 1.0x the clone's time, >= 3x
   faster than the torch path.
2. quantize() on 12 x Linear(4096, 4096): wall time vs the sum of its
   quantize_weight calls, and the peak RSS increase (fresh process).
   Target: peak increase <= 1.3x the int8 model's size.

Usage: python benchmarks/bench_quantize.py [--repeats N] [--quick]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import warnings

import torch

import mono_quant as mq
from common import interleaved, machine_info, summary, write_results

warnings.filterwarnings("ignore")


def torch_path(w: torch.Tensor) -> torch.Tensor:
    """What a user without mono-quant writes: per-row aminmax, qparams, quantize_per_channel."""
    x = w.float()
    mn, mx = torch.aminmax(x, dim=1)
    min_neg, max_pos = mn.clamp(max=0), mx.clamp(min=0)
    scale = ((max_pos - min_neg) / 255.0).clamp(min=torch.finfo(torch.float32).eps)
    zp = (-128 - torch.round(min_neg / scale)).clamp(-128, 127).to(torch.int64)
    return torch.quantize_per_channel(x, scale.double(), zp, 0, torch.qint8).int_repr()


def bench_quantize_weight(shapes, repeats):
    rows = []
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            # two copies, rotated, so nothing is served from the 32 MiB L3
            copies = [torch.randn(shape).to(dtype) for _ in range(2)]
            sink = torch.empty_like(copies[0])
            state = {"i": 0}

            def pick():
                state["i"] ^= 1
                return copies[state["i"]]

            times = interleaved({
                "clone": lambda: pick().clone(),
                "copy_": lambda: sink.copy_(pick()),
                "mono_quant": lambda: mq.quantize_weight(pick(), "int8"),
                "torch": lambda: torch_path(pick()),
            }, repeats=repeats)
            stats = {k: summary(v) for k, v in times.items()}
            in_bytes = copies[0].numel() * copies[0].element_size()
            out_bytes = copies[0].numel() + 8 * shape[0]
            mqt = stats["mono_quant"]["median_us"] * 1e-6
            row = {
                "shape": list(shape), "dtype": str(dtype).replace("torch.", ""), "stats": stats,
                "mono_quant_GBps": (in_bytes + out_bytes) / mqt / 1e9,
                "clone_GBps": 2 * in_bytes / (stats["clone"]["median_us"] * 1e-6) / 1e9,
                "stream_GBps": 2 * in_bytes / (stats["copy_"]["median_us"] * 1e-6) / 1e9,
                "time_vs_clone": stats["mono_quant"]["median_us"] / stats["clone"]["median_us"],
                "time_vs_copy": stats["mono_quant"]["median_us"] / stats["copy_"]["median_us"],
                "speedup_vs_torch": stats["torch"]["median_us"] / stats["mono_quant"]["median_us"],
            }
            rows.append(row)
            print(f"{'x'.join(map(str, shape)):>10} {row['dtype']:>8} | mono-quant {stats['mono_quant']['median_us']/1e3:7.2f} ms"
                  f" [{stats['mono_quant']['p10_us']/1e3:.2f}-{stats['mono_quant']['p90_us']/1e3:.2f}]"
                  f" {row['mono_quant_GBps']:5.1f} GB/s | clone {stats['clone']['median_us']/1e3:7.2f} ms"
                  f" {row['clone_GBps']:5.1f} GB/s | copy_ {stats['copy_']['median_us']/1e3:6.2f} ms"
                  f" {row['stream_GBps']:5.1f} GB/s | torch {stats['torch']['median_us']/1e3:7.2f} ms"
                  f" | time/clone {row['time_vs_clone']:.2f}x (target <= 1.0), time/copy_ {row['time_vs_copy']:.2f}x"
                  f" | vs torch {row['speedup_vs_torch']:.1f}x (target >= 3)")
            del copies
    return rows


MODEL_SCRIPT = textwrap.dedent("""
    import json, statistics, time, torch, mono_quant as mq
    from mono_quant.packing import pack_int8_linear
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(LAYERS)])
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    mq.quantize(torch.nn.Linear(64, 64))  # warm up imports and kernels
    # peak RSS of one quantize() from a reset high-water mark
    before = status("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")
    result = mq.quantize(model)
    peak = status("VmHWM:")
    int8_bytes, fp32_bytes = result.report.model_bytes_after, result.report.model_bytes_before
    del result
    # wall time of quantize() vs the sum of the quantize_weight calls it makes
    # (symmetric per channel), interleaved
    # "kept": quantize_weight + pack_int8_linear with the results held alive, as
    # quantize() must (fresh pages for every layer, so page faults cost the same
    # on both sides): the difference to quantize() is its Python overhead
    walls, sums, kept = [], [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for m in model:
            mq.quantize_weight(m.weight, "int8", symmetric=True)
        sums.append(time.perf_counter() - t0)
        # the same kernel work quantize() does: quantize, then pack for the matmul kernels
        t0 = time.perf_counter()
        held = [pack_int8_linear(mq.quantize_weight(m.weight, "int8", symmetric=True)) for m in model]
        kept.append(time.perf_counter() - t0)
        del held
        t0 = time.perf_counter()
        mq.quantize(model)
        walls.append(time.perf_counter() - t0)
    print(json.dumps({"wall_s": statistics.median(walls), "quantize_weight_sum_s": statistics.median(sums),
                      "quantize_weight_kept_s": statistics.median(kept),
                      "rss_before": before, "peak_increase": peak - before, "int8_bytes": int8_bytes,
                      "fp32_bytes": fp32_bytes}))
""")


def bench_model(layers: int, repeats: int):
    script = MODEL_SCRIPT.replace("LAYERS", str(layers)).replace("REPEATS", str(repeats))
    out = subprocess.run([sys.executable, "-c", script],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    r["overhead_ratio"] = r["wall_s"] / r["quantize_weight_sum_s"]
    r["overhead_ratio_kept"] = r["wall_s"] / r["quantize_weight_kept_s"]
    r["peak_vs_int8"] = r["peak_increase"] / r["int8_bytes"]
    print(f"quantize() on {layers} x Linear(4096,4096) ({r['fp32_bytes']/2**20:.0f} MiB fp32): "
          f"{r['wall_s']*1e3:.0f} ms vs {r['quantize_weight_sum_s']*1e3:.0f} ms of quantize_weight calls "
          f"({r['overhead_ratio']:.2f}x), {r['quantize_weight_kept_s']*1e3:.0f} ms of quantize_weight + packing, kept alive "
          f"({r['overhead_ratio_kept']:.2f}x); peak RSS +{r['peak_increase']/2**20:.0f} MiB = "
          f"{r['peak_vs_int8']:.2f}x the int8 model ({r['int8_bytes']/2**20:.0f} MiB; target <= 1.3x)")
    return r


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="one shape, 4 layers (a smoke run)")
    args = parser.parse_args()
    info = machine_info()
    print(f"{info['cpu']} | {info['cores']} cores | torch threads {info['torch_threads']} | "
          f"torch {info['torch']} | kernels {info['dispatched_isa']}")
    shapes = [(4096, 4096)] if args.quick else [(4096, 4096), (11008, 4096)]
    rows = bench_quantize_weight(shapes, args.repeats)
    model = bench_model(4 if args.quick else 12, 3 if args.quick else 5)
    path = write_results("bench_quantize", {"machine": info, "quantize_weight": rows, "quantize_model": model})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
